"""DAG construction at scale: ``snakemake -n`` for 10,000 slides × 10 encoders.

Placeholder slide files (empty) make a 10k-row sample sheet; the workflow plans tiling per embed
shard (``tiling.jobs: shard``), shards of 100 slides, 10 encoders, one task and the HEST head.
The reference is the naive layout, one job per (slide, encoder), as a trivial three-rule
Snakefile over the same files, measured in the same run. ``ratio`` = naive seconds ÷ ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
N_SLIDES = 10_000
N_ENCODERS = 10

NAIVE = """
import pandas as pd
SAMPLES = pd.read_csv("samples.tsv", sep="\\t")["sample_id"].tolist()
ENCODERS = config["encoders"]

rule all:
    input: expand("naive/features/{encoder}/{sample}.h5", encoder=ENCODERS, sample=SAMPLES)

rule tile:
    input: "slides/{sample}.tiff"
    output: "naive/tiles/{sample}.parquet"
    shell: "touch {output}"

rule embed:
    input: "naive/tiles/{sample}.parquet"
    output: "naive/features/{encoder}/{sample}.h5"
    shell: "touch {output}"
"""


def _dry_run(args: list[str], cwd: Path) -> float:
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    t = time.perf_counter()
    subprocess.run(
        [str(bindir / "snakemake"), "-n", "--quiet", "--cores", "1", *args],
        check=True,
        env=env,
        cwd=cwd,
        capture_output=True,
    )
    return time.perf_counter() - t


def run(tmp: Path) -> dict:
    from histofuse.encoders.registry import list_encoders

    (tmp / "slides").mkdir()
    rows = ["sample_id\tpatient_id\tslide\texpression"]
    for i in range(N_SLIDES):
        s = f"S{i:05d}"
        (tmp / "slides" / f"{s}.tiff").touch()
        (tmp / "slides" / f"{s}.h5ad").touch()
        rows.append(f"{s}\tP{i // 2:05d}\tslides/{s}.tiff\tslides/{s}.h5ad")
    (tmp / "samples.tsv").write_text("\n".join(rows) + "\n")
    encoders = list_encoders()[:N_ENCODERS]
    config = {
        "samples": "samples.tsv",
        "encoders": encoders,
        "tiling": {"jobs": "shard"},
        "embed": {"shard_size": 100},
        "tasks": {"spots": {}},
        "heads": {"hest": {}},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp / "Naive.smk").write_text(NAIVE)
    ours = _dry_run(["-s", str(REPO / "Snakefile"), "--configfile", "config.yaml"], tmp)
    naive = _dry_run(["-s", "Naive.smk", "--configfile", "config.yaml"], tmp)
    return {
        "ratio": naive / ours,
        "seconds": ours,
        "reference": "naive one-job-per-(slide, encoder) Snakefile, same files, same run",
        "naive_seconds": naive,
        "n_slides": N_SLIDES,
        "n_encoders": len(encoders),
        "jobs": {"tile": N_SLIDES // 100, "embed": len(encoders) * N_SLIDES // 100},
    }
