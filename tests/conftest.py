"""Shared fixtures: a small generated cohort, tiled once per session."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("OMP_NUM_THREADS", "2")


def sheet_task_config() -> dict:
    """The demo config reduced to the sample sheet's spot task.

    Workflow tests that are about one stage (faults, shards, SLURM) drop the demo's HEST-Bench,
    bulk and PEKA jobs so that they run only the jobs they check.
    """
    import yaml

    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["tasks"].pop("demo-bench", None)
    cfg["demo"]["hest_bench"] = False
    cfg["bulk"] = {}
    cfg["peka"]["encoders"] = []
    return cfg


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """A 4-slide, 2-patient cohort of 800 × 600 µm slides; returns the sample sheet."""
    from histofuse.demo import write_demo_cohort

    out = tmp_path_factory.mktemp("cohort")
    return write_demo_cohort(
        out, seed=3, n_patients=2, slides_per_patient=2, n_genes=40, width_um=800, height_um=600
    )


@pytest.fixture(scope="session")
def small_tiles(small_cohort, tmp_path_factory) -> dict[str, Path]:
    """Spot tiles (56 µm at 1 µm/px) of every sample of the small cohort."""
    from histofuse.samples import load_samples
    from histofuse.slides.spec import TilingSpec
    from histofuse.slides.tiling import tile_spots, write_tiles

    out = tmp_path_factory.mktemp("tiles")
    sheet = load_samples(small_cohort)
    spec = TilingSpec.from_config({"patch_um": 56.0, "target_mpp": 1.0})
    paths = {}
    for sample, row in sheet.iterrows():
        table, meta = tile_spots(row["slide"], row["expression"], spec)
        meta["sample"] = sample
        paths[sample] = out / f"{sample}.parquet"
        write_tiles(table, meta, paths[sample])
    return paths


def embed_cmd(tiles: list[Path], out: Path, batch_size: int = 64) -> list[str]:
    """The ``histofuse embed`` command line of this environment for ``tiny-vit`` on the CPU."""
    return [
        str(Path(sys.executable).parent / "histofuse"),
        "embed",
        "--encoder",
        "tiny-vit",
        "--tiles",
        *map(str, tiles),
        "--out",
        str(out),
        "--embed",
        json.dumps({"batch_size": batch_size, "device": "cpu", "num_workers": 0}),
    ]


def one_thread_env() -> dict[str, str]:
    """The environment with torch on one thread, for embed processes run side by side."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}
