"""A study is its own folder: `histofuse init`, the workflow in the wheel, slide-only studies."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
import yaml

from histofuse.errors import HistofuseError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _slides_sheet(folder: Path, sheet: Path) -> list[str]:
    """Two generated one-slide patients, written as a slide-only sheet (no expression column)."""
    from histofuse.demo import write_demo_cohort

    demo = write_demo_cohort(
        folder, seed=5, n_patients=2, slides_per_patient=1, n_genes=5, width_um=600, height_um=500
    )
    table = pd.read_csv(demo, sep="\t")
    table["slide"] = [os.path.relpath(demo.parent / s, sheet.parent) for s in table["slide"]]
    table[["sample_id", "patient_id", "slide", "mpp"]].to_csv(sheet, sep="\t", index=False)
    return list(table["sample_id"])


def _job_counts(output: str) -> dict[str, int]:
    table = re.search(r"Job stats:\njob\s+count\n[-\s]+\n(.*?)\ntotal", output, re.S)
    assert table is not None, output[-3000:]
    return {name: int(n) for name, n in re.findall(r"^(\S+)\s+(\d+)$", table.group(1), re.M)}


def _small_study(study: Path, encoders: list[str]) -> None:
    """The init config, made small: tiny encoders on CPU, tiles of 112 µm at 1 µm/px."""
    cfg = yaml.safe_load((study / "config.yaml").read_text())
    cfg["encoders"] = encoders
    cfg["tiling"]["target_mpp"] = 1.0
    cfg["embed"] = {"gpu": 0, "num_workers": 0, "threads": 1}
    (study / "config.yaml").write_text(yaml.safe_dump(cfg))


# --- histofuse init -------------------------------------------------------------------------


def test_init_writes_a_study_and_never_overwrites(tmp_path):
    from histofuse.cli import main
    from histofuse.config import load_schema, validate_config

    study = tmp_path / "study"
    assert main(["init", str(study)]) == 0
    names = {p.relative_to(study).as_posix() for p in study.rglob("*") if p.is_file()}
    assert names == {
        "config.yaml",
        "samples.tsv",
        "Snakefile",
        "README.md",
        "profiles/default/config.yaml",
    }
    cfg = validate_config(yaml.safe_load((study / "config.yaml").read_text()), load_schema())
    assert cfg["samples"] == "samples.tsv" and cfg["tasks"] == {} and not cfg["demo"]["enabled"]
    assert cfg["tiling"]["mode"] == "grid"
    header = (study / "samples.tsv").read_text().splitlines()
    assert header == ["sample_id\tpatient_id\tslide\texpression\tmpp"]
    assert "module histofuse" in (study / "Snakefile").read_text()
    # a second init keeps the user's files
    (study / "config.yaml").write_text("mine\n")
    assert main(["init", str(study)]) == 2
    assert (study / "config.yaml").read_text() == "mine\n"


# --- slide-only studies: the plan ----------------------------------------------------------


def _slide_only_config(sheet: Path, **tiling) -> dict:
    from histofuse.config import load_schema, validate_config

    cfg = {"samples": str(sheet), "encoders": ["tiny-vit", "tiny-cnn"], "tiling": tiling}
    return validate_config(cfg, load_schema())


def test_a_study_without_tasks_plans_features_qc_and_slides_page(tmp_path):
    from histofuse.plan import Plan

    samples = _slides_sheet(tmp_path / "cohort", tmp_path / "slides.tsv")
    plan = Plan.from_config(_slide_only_config(tmp_path / "slides.tsv", mode="grid"))
    assert plan.slide_only
    assert plan.all_feature_manifests() == [
        "results/features/tiny-vit/0000.manifest.json",
        "results/features/tiny-cnn/0000.manifest.json",
    ]
    stats = [f"results/tiles/{s}.json" for s in samples]
    assert plan.tile_stats() == (stats, stats)


def test_spot_tiling_of_slides_without_expression_stops_at_plan_time(tmp_path):
    from histofuse.plan import Plan

    _slides_sheet(tmp_path / "cohort", tmp_path / "slides.tsv")
    with pytest.raises(HistofuseError, match=r"no expression file.*tiling.mode: grid"):
        Plan.from_config(_slide_only_config(tmp_path / "slides.tsv"))


# --- tile --sheet without --sample ---------------------------------------------------------


def test_tile_sheet_without_sample_tiles_every_row(tmp_path):
    from histofuse.cli import main

    samples = _slides_sheet(tmp_path / "cohort", tmp_path / "slides.tsv")
    tiling = '{"mode": "grid", "target_mpp": 1.0}'
    out = tmp_path / "tiles"
    args = ["tile", "--sheet", str(tmp_path / "slides.tsv"), "--out-dir", str(out)]
    assert main([*args, "--tiling", tiling]) == 0
    for sample in samples:
        assert len(pd.read_parquet(out / f"{sample}.parquet")) > 0
        assert (out / f"{sample}.qc.png").stat().st_size > 0


# --- the slides page -----------------------------------------------------------------------


def test_slides_page_lists_tiles_mpp_source_and_failures(tmp_path):
    import json

    from histofuse.report.slides import write_slides_page

    ok = {"sample": "a", "slide": "a.tiff", "n_tiles": 7, "mpp_x": 0.25, "mpp_source": "metadata",
          "effective_mpp": 0.5, "tissue_fraction": 0.41234, "warnings": ["w1"]}  # fmt: skip
    bad = {"sample": "b", "slide": "b.tiff", "n_tiles": 0, "mpp_source": "", "error": "no µm/px"}
    files = []
    for doc in (ok, bad):
        files.append(tmp_path / "tiles" / f"{doc['sample']}.json")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_text(json.dumps(doc))
    table = write_slides_page(files, tmp_path / "report")
    csv = pd.read_csv(tmp_path / "report/slides.csv", keep_default_na=False)
    assert csv["tiles"].tolist() == [7, 0] and csv["mpp"].tolist() == ["0.25", ""]
    assert csv["mpp_source"].tolist() == ["metadata", ""] and csv["warnings"][0] == "w1"
    assert csv["error"].tolist() == ["", "no µm/px"] and table["tissue_fraction"][0] == 0.412
    html = (tmp_path / "report/slides.html").read_text()
    assert "2 slides, 7 tiles, 1 not tiled" in html and 'src="../tiles/a.qc.png"' in html
    (tmp_path / "tiles/a.json").write_text("{")
    with pytest.raises(HistofuseError, match=r"tile stats .*a\.json cannot be read"):
        write_slides_page(files, tmp_path / "report")


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
def test_slide_only_study_runs_to_features_qc_and_slides_page(tmp_path):
    from histofuse.cache import read_manifest

    study = tmp_path / "study"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    init = [str(BIN / "histofuse"), "init", str(study)]
    subprocess.run(init, env=env, check=True, capture_output=True)
    samples = _slides_sheet(tmp_path / "cohort", study / "samples.tsv")
    _small_study(study, ["tiny-vit"])
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2"], cwd=study, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert _job_counts(proc.stderr) == {"tile": 2, "embed": 1, "slides": 1, "all": 1}
    tiles = {s: len(pd.read_parquet(study / f"results/tiles/{s}.parquet")) for s in samples}
    manifest = read_manifest(study / "results/features/tiny-vit/0000.zarr")
    assert manifest["samples"] == tiles and min(tiles.values()) > 0
    assert all((study / f"results/tiles/{s}.qc.png").stat().st_size > 0 for s in samples)
    page = pd.read_csv(study / "results/report/slides.csv")
    assert dict(zip(page["sample"], page["tiles"], strict=True)) == tiles
    assert set(page["mpp"]) == {0.5} and set(page["mpp_source"]) == {"override"}
    assert all(s in (study / "results/report/slides.html").read_text() for s in samples)
    # the module's onstart is skipped by Snakemake: the study's own Snakefile records the shards
    assert (study / "results/shards.tsv").read_text().split() == [
        "sample_id", "shard", samples[0], "0000", samples[1], "0000",
    ]  # fmt: skip


def _uv() -> str | None:
    found = shutil.which("uv")
    for candidate in (found, REPO / ".tools/bin/uv", BIN.parents[1] / ".tools/bin/uv"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def _wheel(uv: str, out: Path) -> Path:
    """The wheel of this checkout, built offline from uv's cache when it can be."""
    for offline in (["--offline"], []):
        cmd = [uv, "build", "--wheel", *offline, "-o", str(out), str(REPO)]
        if subprocess.run(cmd, capture_output=True, text=True).returncode == 0:
            return next(out.glob("histofuse-*.whl"))
    raise AssertionError(f"`uv build --wheel {REPO}` failed")


@pytest.mark.slow
def test_installed_wheel_inits_and_plans_a_study(tmp_path):
    uv = _uv()
    if uv is None:
        pytest.skip("uv is not installed: it builds and installs the wheel")
    wheel = _wheel(uv, tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin/python"
    # The dependencies come from the running environment (no network); histofuse from the wheel.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [uv, "pip", "install", "--no-deps", "--offline", "--python", str(python), str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    where = subprocess.run(
        [python, "-c", "import histofuse; print(histofuse.workflow_dir())"],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert Path(where) == Path(site) / "histofuse/workflow", where

    subprocess.run([venv / "bin/histofuse", "init", "study"], cwd=tmp_path, env=env, check=True)
    study = tmp_path / "study"
    plan = [python, "-m", "snakemake", "-n"]
    empty = subprocess.run(plan, cwd=study, env=env, capture_output=True, text=True)
    assert empty.returncode != 0 and "sample sheet samples.tsv has no rows" in empty.stderr
    _slides_sheet(tmp_path / "cohort", study / "samples.tsv")
    proc = subprocess.run(plan, cwd=study, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert _job_counts(proc.stdout) == {"tile": 2, "embed": 1, "slides": 1, "all": 1}
