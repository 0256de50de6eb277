"""Corrupt inputs in a real workflow run: the others finish and the report says what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata
import pandas as pd
import pytest
import yaml
from conftest import sheet_task_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _config(path: Path, on_error: str) -> Path:
    """Four one-slide patients, one encoder, the HEST probe."""
    cfg = sheet_task_config()
    cfg["demo"].update(patients=4, slides_per_patient=1, genes=30)
    cfg["encoders"] = ["tiny-vit"]
    cfg["feature_sets"] = {"singles": True}
    cfg["tasks"]["demo-spots"].update(genes={"top_k": 20, "select_on": "all"})
    cfg["tasks"]["demo-spots"]["split"] = {"scheme": "patient-kfold", "n_folds": 2}
    cfg["heads"] = {"hest": {"cap_components": True}}
    cfg["report"]["bootstrap"] = 0
    cfg["tiling"]["on_error"] = on_error
    path.write_text(yaml.safe_dump(cfg))
    return path


def _snakemake(work: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(work)]
    cmd += ["--configfile", str(config), "--cores", "2", *args]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_corrupt_slide_and_spots_outside_slide_with_keep_going(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    stop = _config(tmp_path / "stop.yaml", "stop")
    assert _snakemake(work, stop, "resources/demo/samples.tsv").returncode == 0
    sheet = pd.read_csv(work / "resources/demo/samples.tsv", sep="\t").set_index("sample_id")
    assert list(sheet.index) == ["P1-S1", "P2-S1", "P3-S1", "P4-S1"]
    # a truncated TIFF (an interrupted copy) ...
    slide = work / "resources/demo" / sheet.at["P1-S1", "slide"]
    slide.write_bytes(slide.read_bytes()[: slide.stat().st_size // 3])
    # ... and an expression file whose spot coordinates lie outside its slide
    h5ad = work / "resources/demo" / sheet.at["P2-S1", "expression"]
    adata = anndata.read_h5ad(h5ad)
    adata.obsm["spatial"] = adata.obsm["spatial"] + 1e6
    adata.write_h5ad(h5ad)

    def rel(path: Path) -> str:
        return str(path.relative_to(work))

    # Default: the broken samples' jobs fail with one clear line each; the others still tile.
    proc = _snakemake(work, stop, "--keep-going")
    assert proc.returncode != 0
    log1 = (work / "logs/tile/P1-S1.log").read_text()
    assert f"histofuse: error: sample P1-S1: slide {rel(slide)} cannot be read" in log1
    assert "Traceback" not in log1
    log2 = (work / "logs/tile/P2-S1.log").read_text()
    assert rel(h5ad) in log2 and "outside slide" in log2 and "Traceback" not in log2
    for good in ("P3-S1", "P4-S1"):
        assert (work / f"results/tiles/{good}.parquet").is_file()
    assert not (work / "results/report/summary.csv").exists()

    # on_error: record, with --keep-going: the run completes and the report lists what is missing
    record = _config(tmp_path / "record.yaml", "record")
    proc = _snakemake(work, record, "--keep-going")
    assert proc.returncode == 0, proc.stderr[-5000:]
    missing = pd.read_csv(work / "results/report/missing.csv", keep_default_na=False)
    assert list(missing.columns) == ["task", "sample", "barcode", "reason", "fits"]
    assert missing["sample"].tolist() == ["P1-S1", "P2-S1"]
    assert (missing["barcode"] == "").all() and (missing["task"] == "demo-spots").all()
    reasons = dict(zip(missing["sample"], missing["reason"], strict=True))
    assert reasons["P1-S1"].startswith(f"not tiled: slide {rel(slide)} cannot be read")
    assert rel(h5ad) in reasons["P2-S1"] and "outside slide" in reasons["P2-S1"]
    stats = yaml.safe_load((work / "results/tiles/P1-S1.json").read_text())
    assert stats["n_tiles"] == 0 and rel(slide) in stats["error"]

    summary = pd.read_csv(work / "results/report/summary.csv")
    assert summary["pearson_mean"].notna().all()
    pred = pd.read_parquet(work / "results/predictions/demo-spots/tiny-vit/hest.parquet")
    assert set(pred["sample"]) == {"P3-S1", "P4-S1"}
    # nothing left to do: the recorded failures are outputs like any other
    again = _snakemake(work, record, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
