"""A user's own study, run with the README's command: only the user's config applies."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import sheet_task_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO_METRICS = "results/metrics/demo-spots/tiny-vit/hest.parquet"


def _checkout(folder: Path, demo: Path | None = None) -> Path:
    """A copy of the repository's workflow, where a user runs `snakemake` (as in the README).

    ``demo`` replaces its demo config (``config/config.yaml``), e.g. with a smaller demo.
    """
    folder.mkdir(exist_ok=True)
    shutil.copy2(REPO / "Snakefile", folder)
    for sub in ("workflow", "config", "profiles", "envs"):
        shutil.copytree(REPO / sub, folder / sub)
    if demo is not None:
        shutil.copy2(demo, folder / "config/config.yaml")
    return folder


def _snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake` run in `work` (a checkout) on its Snakefile."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "snakemake"), "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _job_counts(output: str) -> dict[str, int]:
    table = re.search(r"Job stats:\njob\s+count\n[-\s]+\n(.*?)\ntotal", output, re.S)
    assert table is not None, output[-3000:]
    return {name: int(n) for name, n in re.findall(r"^(\S+)\s+(\d+)$", table.group(1), re.M)}


def _user_study(folder: Path) -> Path:
    """A user's sheet (two one-slide patients) and a config with only the keys a user writes."""
    from histofuse.demo import write_demo_cohort

    sheet = write_demo_cohort(
        folder / "mydata", seed=7, n_patients=2, slides_per_patient=1, n_genes=30,
        width_um=600, height_um=500,
    )  # fmt: skip
    table = pd.read_csv(sheet, sep="\t")
    table["sample_id"] = "my-" + table["sample_id"]
    table.to_csv(sheet, sep="\t", index=False)
    config = {
        "samples": str(sheet.relative_to(folder)),
        "tiling": {"patch_um": 112, "target_mpp": 1.0},
        "encoders": ["tiny-cnn"],
        "embed": {"num_workers": 0, "threads": 1, "gpu": 0},
        "tasks": {"my-task": {"genes": {"top_k": 10}, "split": {"n_folds": 2}}},
        "heads": {"hest": {"cap_components": True}},
        "report": {"bootstrap": 0},
    }
    path = folder / "my.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _small_demo(path: Path) -> Path:
    """The demo, small: two one-slide patients, one encoder, the HEST probe, no bulk or PEKA."""
    cfg = sheet_task_config()
    cfg["demo"].update(patients=2, slides_per_patient=1, genes=30)
    cfg["encoders"] = ["tiny-vit"]
    cfg["feature_sets"] = {"singles": True}
    cfg["tasks"]["demo-spots"].update(genes={"top_k": 10, "select_on": "all"})
    cfg["tasks"]["demo-spots"]["split"] = {"scheme": "patient-kfold", "n_folds": 2}
    cfg["heads"] = {"hest": {"cap_components": True}}
    cfg["report"]["bootstrap"] = 0
    path.write_text(yaml.safe_dump(cfg))
    return path


# The user's jobs: two tiles, one embed shard, one fit (my-task, tiny-cnn, hest), report, all.
USER_JOBS = {"tile": 2, "embed": 1, "fit": 1, "report": 1, "all": 1}


def test_users_config_replaces_the_demo_config(tmp_path):
    work = _checkout(tmp_path / "histofuse")
    user = _user_study(work)
    proc = _snakemake(work, "--configfile", user.name, "-n")
    assert _job_counts(proc.stdout) == USER_JOBS
    # without a config, the demo config applies
    demo = _job_counts(_snakemake(work, "-n").stdout)
    assert demo["demo_cohort"] == 1 and demo["peka"] == 3 and demo["bulk_fit"] == 6
    # the README's form: a study folder of its own, from anywhere
    study = tmp_path / "my-study"
    study.mkdir()
    user = _user_study(study)
    args = ["-s", str(work / "Snakefile"), "--directory", "my-study", "--configfile", str(user)]
    assert _job_counts(_snakemake(tmp_path, *args, "-n").stdout) == USER_JOBS


@pytest.mark.slow
def test_your_data_after_the_demo_in_the_same_folder(tmp_path):
    # the demo as `make demo` runs it (`snakemake --cores all`), with a smaller demo config
    work = _checkout(tmp_path / "histofuse", demo=_small_demo(tmp_path / "demo.yaml"))
    _snakemake(work)
    demo_files = sorted(p for p in (work / "results/metrics").rglob("*") if p.is_file())
    assert [p.relative_to(work).as_posix() for p in demo_files] == [DEMO_METRICS]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in demo_files}
    user = _user_study(work)

    # A first, partial run (only the tiles): the demo's report no longer stands as this study's.
    _snakemake(work, "results/tiles/my-P1-S1.parquet", "--configfile", user.name)
    assert not (work / "results/report/index.html").exists()
    assert "demo-spots" in (work / "results/report.previous/summary.csv").read_text()

    proc = _snakemake(work, "--configfile", user.name)
    assert _job_counts(proc.stderr) == {**USER_JOBS, "tile": 1}  # my-P1-S1 was tiled above
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in demo_files} == before
    summary = pd.read_csv(work / "results/report/summary.csv")
    assert set(summary["task"]) == {"my-task"} and set(summary["features"]) == {"tiny-cnn"}
    html = (work / "results/report/index.html").read_text()
    assert "my-task" in html and "demo-spots" not in html
    # a second run of the same study finds nothing to do and keeps its report
    again = _snakemake(work, "--configfile", user.name)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert (work / "results/report/index.html").exists()
