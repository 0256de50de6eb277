"""The evaluation design: splits the sheet cannot fill stop at parse time, spatial blocks keep
neighbouring spots on one side, and spot-level schemes are warned about (they leak)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import sheet_task_config

from histofuse import settings
from histofuse.config import load_schema, validate_config
from histofuse.errors import HistofuseError
from histofuse.evaluation.splits import task_splits
from histofuse.plan import Plan
from histofuse.plan.design import LeakWarning

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _config(sheet: Path, split: dict) -> dict:
    cfg = sheet_task_config()
    cfg["demo"]["enabled"] = False
    cfg["samples"] = str(sheet)
    cfg["tasks"]["demo-spots"]["split"] = split
    return cfg


def _one_patient(small_cohort: Path, folder: Path) -> Path:
    """The small cohort's sheet cut to its first patient (two sections), paths made absolute."""
    sheet = pd.read_csv(small_cohort, sep="\t")
    sheet = sheet[sheet["patient_id"] == sheet["patient_id"].iloc[0]].copy()
    for col in ("slide", "expression"):
        sheet[col] = [str((small_cohort.parent / p).resolve()) for p in sheet[col]]
    folder.mkdir(exist_ok=True)
    sheet.to_csv(folder / "one.tsv", sep="\t", index=False)
    return folder / "one.tsv"


@pytest.mark.parametrize("scheme", ["patient-kfold", "leave-one-patient-out"])
def test_the_plan_refuses_a_split_the_sheet_cannot_fill(small_cohort, tmp_path, scheme):
    cfg = validate_config(_config(small_cohort, {"scheme": scheme}), load_schema())
    assert Plan.from_config(cfg).fit_jobs()  # two patients: two folds
    cfg["samples"] = str(_one_patient(small_cohort, tmp_path))
    message = rf"`tasks.demo-spots.split`: {scheme} needs two or more patients; the task's samples"
    with pytest.raises(HistofuseError, match=message + r" come from 1; .* `spatial-block`"):
        Plan.from_config(cfg)
    cfg["tasks"]["demo-spots"]["split"] = {"scheme": "spatial-block", "n_folds": 3}
    assert Plan.from_config(cfg).fit_jobs()  # one patient: blocks of its sections


def test_snakemake_stops_before_any_job_with_one_line(small_cohort, tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    shutil.copy2(REPO / "Snakefile", work)
    for sub in ("workflow", "config", "profiles", "envs"):
        shutil.copytree(REPO / sub, work / sub)
    user = work / "my.yaml"
    sheet = _one_patient(small_cohort, tmp_path)
    user.write_text(yaml.safe_dump(_config(sheet, {"scheme": "patient-kfold"})))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "--cores", "1", "-n", "--configfile", user.name]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("histofuse: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "tasks.demo-spots.split`: patient-kfold needs two or more patients" in errors[0]
    assert errors[0].endswith("for a single-patient study")
    assert "Job stats" not in proc.stdout + proc.stderr and not (work / "results").exists()


def _grid(n_sections: int = 2, side: int = 12, pitch: float = 100.0):
    """Visium-like spots on a square grid (µm) in each section, and their sections."""
    yy, xx = np.mgrid[0:side, 0:side] * pitch + 50.0
    xy = np.tile(np.stack([xx.ravel(), yy.ravel()], axis=1), (n_sections, 1))
    sections = np.repeat([f"S{i}" for i in range(n_sections)], side * side)
    return sections, xy


@pytest.mark.parametrize("block_um", [300.0, 600.0])
def test_spatial_blocks_keep_each_square_on_one_side(block_um):
    sections, xy = _grid()
    split = {"scheme": "spatial-block", "n_folds": 4, "block_um": block_um}
    # the squares written out independently: (section, ⌊x / side⌋, ⌊y / side⌋)
    squares = [
        f"{s}/{int(x // block_um)}/{int(y // block_um)}"
        for s, (x, y) in zip(sections, xy, strict=True)
    ]
    squares = np.asarray(squares)
    fold_sets = []
    for seed in (1, 2):
        folds = task_splits(split, sections, sections, seed, xy)
        assert len(folds) == 4
        tested = np.concatenate([test for _, test in folds])
        assert np.array_equal(np.sort(tested), np.arange(len(xy)))  # every spot once per seed
        for train, test in folds:
            assert not set(squares[train]) & set(squares[test])  # no square on both sides
        fold_sets.append([frozenset(squares[test]) for _, test in folds])
    assert fold_sets[0] != fold_sets[1]  # the seed shuffles the blocks
    # a square holds (side / 100 µm)² spots: blocks follow the µm size
    assert len(set(squares)) == 2 * int(np.ceil(1200 / block_um)) ** 2


def test_spatial_blocks_fewer_than_folds_are_refused():
    sections, xy = _grid(n_sections=1, side=4)  # 400 µm: one 500 µm block
    with pytest.raises(HistofuseError, match=r"1 blocks of 500 µm, fewer than `split.n_folds` 2"):
        task_splits({"scheme": "spatial-block", "n_folds": 2}, sections, sections, 1, xy)


def test_spot_kfold_is_warned_at_plan_time(small_cohort):
    cfg = validate_config(_config(small_cohort, {"scheme": "spot-kfold"}), load_schema())
    with pytest.warns(LeakWarning, match=r"task demo-spots: split scheme 'spot-kfold' .* `spatial"):
        Plan.from_config(cfg)
    cfg["tasks"]["demo-spots"]["split"] = {"scheme": "spatial-block", "n_folds": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakWarning)
        Plan.from_config(cfg)


def test_fewer_patients_than_folds_is_warned_and_recorded(small_cohort):
    """The small cohort has two patients: patient-kfold with 3 folds runs 2, and says so."""
    from histofuse.evaluation.splits import split_warnings

    cfg = validate_config(_config(small_cohort, {"n_folds": 3}), load_schema())
    with pytest.warns(LeakWarning, match=r"n_folds is 3 but .* 2 patients, so it runs 2 folds"):
        Plan.from_config(cfg)
    assert split_warnings({"scheme": "patient-kfold", "n_folds": 2}, 2) == []


@pytest.fixture(scope="module")
def store(small_tiles, tmp_path_factory) -> Path:
    """tiny-vit (seeded random weights) features of the small cohort's four sections."""
    from histofuse.embed import embed_shard

    out = tmp_path_factory.mktemp("features") / "0000.zarr"
    embed_shard([small_tiles[s] for s in sorted(small_tiles)], "tiny-vit", out, device="cpu")
    return out


def _fit(small_cohort, store, out: Path, split: dict) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    from histofuse.fit import fit_task

    task = {"genes": {"top_k": 20, "select_on": "all"}, "split": split}
    out.mkdir()
    metrics = fit_task(
        "t",
        settings.load(settings.Task, "tasks", task),
        small_cohort,
        [store],
        "tiny-vit",
        "ridge",
        {},
        out / "m.parquet",
        out / "p.parquet",
    )
    meta = json.loads(pq.read_schema(out / "m.parquet").metadata[b"histofuse"])
    return metrics, meta, pd.read_parquet(out / "p.parquet")


@pytest.mark.slow
def test_spatial_blocks_in_a_fit_and_the_leak_of_spot_kfold(small_cohort, small_tiles, store):
    out = store.parent
    block = {"scheme": "spatial-block", "n_folds": 4, "block_um": 200.0}
    blocked, meta, pred = _fit(small_cohort, store, out / "block", block)
    assert meta["warnings"] == []
    # the test spots' squares, from the tiles' µm positions (the cache holds 0.5 µm level-0 px)
    tiles = pd.concat(
        pd.read_parquet(p).assign(sample=s)[["sample", "barcode", "x_um", "y_um"]]
        for s, p in small_tiles.items()
    )
    pred = pred.merge(tiles, on=["sample", "barcode"], validate="one_to_one")
    pred["square"] = [
        f"{s}/{int(x // 200)}/{int(y // 200)}"
        for s, x, y in pred[["sample", "x_um", "y_um"]].values
    ]
    assert len(pred) == len(tiles)  # every spot tested once
    assert (pred.groupby("square")["fold"].nunique() == 1).all()  # each square in one fold
    spot, meta, _ = _fit(small_cohort, store, out / "spot", {"scheme": "spot-kfold"})
    assert "spatial-block" in meta["warnings"][0] and "spot-kfold" in meta["warnings"][0]
    # the leak, reported: random-weight features score higher when neighbours are in training
    pooled = {
        name: m.loc[m["protocol"] == "hest-pooled", "pearson"].mean()
        for name, m in (("spot-kfold", spot), ("spatial-block", blocked))
    }
    print(f"mean Pearson, tiny-vit (random weights) + ridge: {pooled}")
    assert pooled["spatial-block"] < pooled["spot-kfold"]
