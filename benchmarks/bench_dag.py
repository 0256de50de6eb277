"""DAG construction at scale: ``snakemake -n`` for 10,000 slides × 10 encoders.

Placeholder slide files (empty) make a 10k-row sample sheet; the workflow plans tiling per embed
shard (``tiling.jobs: shard``), shards of 100 slides, 10 encoders, one task and the HEST head.
The reference is the naive layout, one job per (slide, encoder), as a trivial three-rule
Snakefile over the same files, measured in the same run. ``ratio`` = naive seconds ÷ ours.

``seconds`` is the median wall time of three dry runs of ours (one of the naive layout, which takes
minutes); ``cpu_seconds`` is the CPU time of the same runs, which a busy shared machine inflates
far less than wall time. Two costs that are not the DAG's are kept out and reported on their own:

- The SLURM executor plugin's start-up probe (see ``slurm_probe.py``): timed once
  (``slurm_probe_seconds``) and, where it stalls, bypassed on the dry runs' PATH
  (``slurm_probe_bypassed``).
- Python bytecode: the dry runs are allowed to write ``.pyc`` files (``PYTHONDONTWRITEBYTECODE``
  is dropped), and an untimed ``snakemake --version`` warms them, as an installed environment has
  them (``compile-bytecode`` in pyproject.toml).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from slurm_probe import slurm_probe

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


def _env(shim: Path | None) -> dict[str, str]:
    bindir = Path(sys.executable).parent
    path = os.pathsep.join([*([str(shim)] if shim else []), str(bindir), os.environ["PATH"]])
    env = {**os.environ, "PATH": path}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _snakemake(args: list[str], cwd: Path, shim: Path | None) -> tuple[float, float]:
    """Runs snakemake; returns (wall seconds, CPU seconds)."""
    bindir = Path(sys.executable).parent
    cpu, t = _cpu_children(), time.perf_counter()
    subprocess.run(
        [str(bindir / "snakemake"), *args],
        check=True,
        env=_env(shim),
        cwd=cwd,
        capture_output=True,
    )
    return time.perf_counter() - t, _cpu_children() - cpu


def _dry_run(args: list[str], cwd: Path, shim: Path | None) -> tuple[float, float]:
    return _snakemake(["-n", "--quiet", "--cores", "1", *args], cwd, shim)


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
    probe, shim = slurm_probe(tmp)
    startup, startup_cpu = _snakemake(["--version"], tmp, shim)  # untimed warm-up, recorded
    ours_args = ["-s", str(REPO / "Snakefile"), "--configfile", "config.yaml"]
    runs = [_dry_run(ours_args, tmp, shim) for _ in range(3)]
    peak_ours = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    naive, naive_cpu = _dry_run(["-s", "Naive.smk", "--configfile", "config.yaml"], tmp, shim)
    peak_all = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ours = statistics.median(w for w, _ in runs)
    ours_cpu = statistics.median(c for _, c in runs)
    return {
        "ratio": naive / ours,
        "seconds": ours,
        "seconds_runs": [round(w, 3) for w, _ in runs],
        "cpu_seconds": ours_cpu,
        "cpu_ratio": naive_cpu / ours_cpu,
        "reference": "naive one-job-per-(slide, encoder) Snakefile, same files, same run",
        "naive_seconds": naive,
        "naive_cpu_seconds": naive_cpu,
        "startup_seconds": startup,
        "startup_cpu_seconds": startup_cpu,
        "peak_rss_mb": {"ours": round(peak_ours), "naive": round(max(peak_all, peak_ours))},
        "slurm_probe_seconds": probe,
        "slurm_probe_bypassed": shim is not None,
        "load_average_1min": os.getloadavg()[0],
        "n_slides": N_SLIDES,
        "n_encoders": len(encoders),
        "jobs": {"tile": N_SLIDES // 100, "embed": len(encoders) * N_SLIDES // 100},
    }
