"""Incremental reuse in the layout meant for many slides: tiling and embedding per shard.

One real run of the demo with ``tiling.jobs: shard`` and shards of two samples, then dry runs
whose job counts show what a change schedules: a new encoder only its embed jobs and the heads
and report using it, a head hyperparameter no embed or tile job, new slides only new shards, and
a cache copied with its modification times nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import sheet_task_config
from test_workflow import job_counts, snakemake

pytestmark = pytest.mark.slow


def sharded_config(path: Path, **changes) -> Path:
    cfg = sheet_task_config()
    cfg["tiling"]["jobs"] = "shard"
    cfg["embed"]["shard_size"] = 2
    cfg["encoders"] = ["tiny-cnn"]
    cfg["feature_sets"]["concat"] = []
    cfg["heads"] = {"hest": {"cap_components": True}}
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("sharded")
    cfg = sharded_config(work / "config.yaml")
    planned = job_counts(snakemake(work, "-n", config=cfg).stdout)
    snakemake(work, config=cfg)
    return work, planned


def test_sharded_layout_runs_one_tile_and_one_embed_job_per_shard(sharded_run):
    work, planned = sharded_run
    # 6 demo slides in shards of 2: three tile jobs and three embed jobs, not six of each
    assert planned == {
        "all": 1,
        "demo_cohort": 1,
        "tile_shard": 3,
        "embed": 3,
        "fit": 1,
        "report": 1,
    }
    registry = (work / "results/shards.tsv").read_text().splitlines()[1:]
    assert sorted({line.split("\t")[1] for line in registry}) == ["0000", "0001", "0002"]
    for shard in ("0000", "0001", "0002"):
        tiles = sorted(p.name for p in (work / "results/tiles/shards" / shard).glob("*.parquet"))
        assert len(tiles) == 2
        assert (work / f"results/features/tiny-cnn/{shard}.manifest.json").is_file()
    cfg = work / "config.yaml"
    assert "Nothing to be done" in snakemake(work, "-n", config=cfg).stdout


def test_new_encoder_schedules_only_its_embed_jobs_and_heads(sharded_run, tmp_path):
    work = sharded_run[0]
    cfg = sharded_config(tmp_path / "c.yaml", encoders=["tiny-cnn", "tiny-vit"])
    proc = snakemake(work, "-n", config=cfg)
    assert job_counts(proc.stdout) == {"all": 1, "embed": 3, "fit": 1, "report": 1}
    assert "output: results/features/tiny-vit/0002.zarr" in proc.stdout
    assert "output: results/features/tiny-cnn/" not in proc.stdout


def test_head_hyperparameter_schedules_no_embed_or_tile_job(sharded_run, tmp_path):
    work = sharded_run[0]
    cfg = sharded_config(tmp_path / "c.yaml", heads={"hest": {"n_components": 8}})
    assert job_counts(snakemake(work, "-n", config=cfg).stdout) == {
        "all": 1,
        "fit": 1,
        "report": 1,
    }


def test_new_slides_schedule_only_new_shards(sharded_run, tmp_path):
    work = sharded_run[0]
    # a fourth patient with two slides: one new shard, whatever the cohort generator rewrites
    cfg = sharded_config(tmp_path / "c.yaml", **{"demo.patients": 4})
    proc = snakemake(work, "-n", config=cfg)
    assert job_counts(proc.stdout) == {
        "all": 1,
        "demo_cohort": 1,
        "tile_shard": 1,
        "embed": 1,
        "fit": 1,
        "report": 1,
    }
    assert "output: results/tiles/shards/0003\n" in proc.stdout
    assert "output: results/features/tiny-cnn/0003.zarr" in proc.stdout
    for old in ("0000", "0001", "0002"):
        assert f"output: results/tiles/shards/{old}\n" not in proc.stdout
        assert f"output: results/features/tiny-cnn/{old}.zarr" not in proc.stdout


def test_cache_copied_with_mtimes_is_reused(sharded_run, tmp_path):
    work = sharded_run[0]
    copy = tmp_path / "elsewhere"
    for folder in ("resources", "results"):  # no .snakemake metadata travels
        shutil.copytree(work / folder, copy / folder, copy_function=shutil.copy2)
    proc = snakemake(copy, "-n", config=work / "config.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr
