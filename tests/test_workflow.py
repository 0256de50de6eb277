"""The Snakemake workflow, run for real through its command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config or REPO / "config/config.yaml"),
        "--cores",
        "2",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    table = re.search(r"Job stats:\njob\s+count\n[-\s]+\n(.*?)\ntotal", output, re.S)
    if table is None:
        return {}
    return {name: int(n) for name, n in re.findall(r"^(\S+)\s+(\d+)$", table.group(1), re.M)}


def write_config(path: Path, **changes) -> Path:
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_lint_is_clean():
    proc = snakemake(REPO, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_dry_run_plans_the_demo(tmp_path):
    proc = snakemake(tmp_path, "-n")
    counts = job_counts(proc.stdout)
    # fit: hest and linear on 3 feature sets + 7 fusion heads on the concatenation only
    assert counts == {"all": 1, "demo_cohort": 1, "embed": 2, "fit": 13, "report": 1, "tile": 6}
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tiling.patch_umm": 3}, "unknown config key(s) 'patch_umm' under `tiling`"),
        ({"encoders": ["tiny-vit", "unii"]}, "unknown encoder 'unii'"),
        ({"embed.batch_size": "large"}, "config `embed.batch_size` = 'large'"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, changes, message):
    cfg = write_config(tmp_path / "c.yaml", **changes)
    proc = snakemake(tmp_path, config=cfg, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_missing_input_file_stops_before_any_job(tmp_path):
    (tmp_path / "slide.tiff").write_bytes(b"x")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample_id\tpatient_id\tslide\texpression\nA\tP1\tslide.tiff\tA.h5ad\n")
    cfg = write_config(tmp_path / "c.yaml", **{"demo.enabled": False, "samples": str(sheet)})
    proc = snakemake(tmp_path, config=cfg, check=False)
    assert proc.returncode != 0
    assert re.search(r"row 2 \(A\): expression file \S*A.h5ad does not exist", proc.stderr)
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    return work, snakemake(work)


@pytest.mark.slow
def test_demo_end_to_end_report(demo_run):
    work = demo_run[0]
    summary = pd.read_csv(work / "results/report/summary.csv")
    for col in (
        "task",
        "features",
        "head",
        "protocol",
        "pearson_mean",
        "pearson_std",
        "n_folds",
        "n_genes",
    ):
        assert col in summary.columns
    assert sorted(set(summary["features"])) == ["tiny-cnn", "tiny-cnn+tiny-vit", "tiny-vit"]
    fused = summary[summary["features"] == "tiny-cnn+tiny-vit"]
    assert {"concat", "self-attn-released", "token-attn", "gated"} <= set(fused["head"])
    assert set(summary[summary["features"] == "tiny-vit"]["head"]) == {"hest", "linear"}
    assert set(summary["protocol"]) == {"hest-pooled", "per-sample"}
    summary = summary[summary["protocol"] == "hest-pooled"]
    assert (summary["task"] == "demo-spots").all()
    assert summary["pearson_mean"].between(0.05, 1).all()  # finite and informative
    assert summary["pearson_std"].ge(0).all()
    assert (summary["n_folds"] == 3).all() and (summary["n_genes"] == 50).all()
    md = (work / "results/report/summary.md").read_text()
    assert "tiny-cnn+tiny-vit" in md


@pytest.mark.slow
def test_second_run_does_nothing_quickly(demo_run):
    work = demo_run[0]
    proc = snakemake(work)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert "Execute" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_head_change_reruns_only_heads(demo_run, tmp_path):
    work = demo_run[0]
    cfg = write_config(tmp_path / "c.yaml", **{"heads.hest": {"n_components": 32}})
    counts = job_counts(snakemake(work, "-n", config=cfg).stdout)
    assert counts == {"all": 1, "fit": 3, "report": 1}


@pytest.mark.slow
def test_new_encoder_schedules_only_its_jobs(demo_run, tmp_path):
    work = demo_run[0]
    cfg = write_config(tmp_path / "c.yaml", encoders=["tiny-vit", "tiny-cnn", "tiny-vit-mean"])
    counts = job_counts(snakemake(work, "-n", config=cfg).stdout)
    assert counts == {"all": 1, "embed": 1, "fit": 2, "report": 1}  # hest and linear


@pytest.mark.slow
def test_shard_registry_is_recorded(demo_run):
    registry = (demo_run[0] / "results/shards.tsv").read_text().splitlines()
    assert registry[0] == "sample_id\tshard"
    assert {line.split("\t")[1] for line in registry[1:]} == {"0000"}
    assert len(registry) == 1 + 6


@pytest.mark.slow
def test_added_slides_schedule_only_new_shards(demo_run, tmp_path):
    work = demo_run[0]
    # a fourth patient: the demo cohort is rewritten, but its existing slides' tiles and the
    # finished shard are kept (slides are ancient inputs; shard 0000's membership is recorded)
    cfg = write_config(tmp_path / "c.yaml", **{"demo.patients": 4})
    proc = snakemake(work, "-n", config=cfg)
    counts = job_counts(proc.stdout)
    assert counts == {"all": 1, "demo_cohort": 1, "tile": 2, "embed": 2, "fit": 13, "report": 1}
    assert "results/features/tiny-vit/0001.zarr" in proc.stdout
    assert "results/features/tiny-vit/0000.zarr" not in proc.stdout


@pytest.mark.slow
def test_cache_copied_with_mtimes_is_reused(demo_run, tmp_path):
    work = demo_run[0]
    copy = tmp_path / "elsewhere"
    for folder in ("resources", "results"):  # no .snakemake metadata travels
        shutil.copytree(work / folder, copy / folder, copy_function=shutil.copy2)
    proc = snakemake(copy, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def _save_weights(path: Path, seed: int) -> None:
    import torch

    from histofuse.encoders.model import build_trunk
    from histofuse.encoders.registry import get_spec

    torch.manual_seed(seed)
    torch.save(build_trunk(get_spec("tiny-cnn")).state_dict(), path)


@pytest.mark.slow
def test_weights_and_pooling_changes_recompute_only_affected_stores(demo_run, tmp_path):
    import shutil

    from histofuse.cache.store import read_provenance
    from histofuse.encoders.model import sha256_file

    work = tmp_path / "work"
    shutil.copytree(demo_run[0], work, symlinks=True)
    assert "Nothing to be done" in snakemake(work, "-n").stdout
    weights = tmp_path / "tiny-cnn.pth"
    _save_weights(weights, seed=1)
    # only the HEST probe, so the reruns below stay short
    cfg = write_config(tmp_path / "c.yaml", weights={"tiny-cnn": str(weights)}, heads={"hest": {}})
    # new weights: only tiny-cnn's store and the heads reading it
    assert job_counts(snakemake(work, "-n", config=cfg).stdout) == {
        "all": 1,
        "embed": 1,
        "fit": 2,
        "report": 1,
    }
    snakemake(work, config=cfg)
    store = work / "results/features/tiny-cnn/0000.zarr"
    assert read_provenance(store)["weights_sha256"] == sha256_file(weights)
    vit_before = (work / "results/features/tiny-vit/0000.manifest.json").stat().st_mtime_ns
    assert "Nothing to be done" in snakemake(work, "-n", config=cfg).stdout
    # the same file rewritten with other weights (another hash) recomputes the same store only
    time.sleep(1)
    _save_weights(weights, seed=2)
    assert job_counts(snakemake(work, "-n", config=cfg).stdout) == {
        "all": 1,
        "embed": 1,
        "fit": 2,
        "report": 1,
    }
    snakemake(work, config=cfg)
    assert read_provenance(store)["weights_sha256"] == sha256_file(weights)
    assert (work / "results/features/tiny-vit/0000.manifest.json").stat().st_mtime_ns == vit_before
    # another pooling of the same network is another store; tiny-cnn's is kept
    cfg2 = write_config(
        tmp_path / "c2.yaml",
        encoders=["tiny-vit-mean", "tiny-cnn"],
        weights={"tiny-cnn": str(weights)},
        heads={"hest": {}},
        **{"feature_sets.concat": [["tiny-vit-mean", "tiny-cnn"]]},
    )
    assert job_counts(snakemake(work, "-n", config=cfg2).stdout) == {
        "all": 1,
        "embed": 1,
        "fit": 2,
        "report": 1,
    }
