"""A workflow killed with SIGKILL during a fit job, then rerun, gives a clean run's outputs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import sheet_task_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIT = "results/metrics/demo-spots/tiny-vit/linear.parquet"


def _config(path: Path) -> Path:
    """A small demo: two one-slide patients, one encoder, one trained head slow enough to kill."""
    cfg = sheet_task_config()
    cfg["demo"].update(patients=2, slides_per_patient=1, genes=30)
    cfg["encoders"] = ["tiny-vit"]
    cfg["feature_sets"] = {"singles": True}
    cfg["tasks"]["demo-spots"].update(genes={"top_k": 20, "select_on": "all"})
    cfg["tasks"]["demo-spots"]["split"] = {"scheme": "patient-kfold", "n_folds": 2}
    cfg["heads"] = {"linear": {"embed_dim": 32, "epochs": 200, "batch_size": 16, "lr": 1e-3}}
    cfg["report"]["bootstrap"] = 0
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cmd(work: Path, config: Path, *args: str) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(config),
        "--cores",
        "1",
        *args,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def _run(work: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _cmd(work, config, *args), cwd=work, env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _fit_is_running(work: Path) -> bool:
    """Whether the fit job has started training (it logs each fold as it starts)."""
    log = work / "logs/fit/demo-spots/tiny-vit/linear.log"
    return log.exists() and "fold 1 of" in log.read_text()


@pytest.mark.slow
def test_killed_fit_then_rerun_equals_a_clean_run(tmp_path):
    work = tmp_path / "killed"
    work.mkdir()
    config = _config(tmp_path / "config.yaml")
    # everything up to the fit job, then a copy of it (mtimes kept) for the clean run
    _run(work, config, "results/features/tiny-vit/0000.manifest.json")
    clean = tmp_path / "clean"
    shutil.copytree(work, clean, ignore=shutil.ignore_patterns(".snakemake"))
    proc = subprocess.Popen(
        _cmd(work, config),
        cwd=work,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: Snakemake and its job die together
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not _fit_is_running(work):
        time.sleep(0.05)
    assert proc.poll() is None, "the workflow ended before its fit job could be killed"
    assert _fit_is_running(work), "the fit job never started training"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / FIT).exists(), "a killed fit job left its metrics behind"
    assert not (work / "results/report/summary.csv").exists()

    # What a user does after a crash: unlock, then rerun; the killed job is redone.
    _run(work, config, "--unlock")
    rerun = _run(work, config, "--rerun-incomplete")
    assert "fit" in rerun.stderr and (work / "results/report/summary.csv").is_file()
    assert not list((work / "results/metrics").rglob(".*.tmp-*")), "temporary files left behind"

    _run(clean, config)
    for path in (
        FIT,
        FIT.replace("metrics", "predictions", 1),
        "results/report/summary.csv",
    ):
        a = pd.read_parquet(work / path) if path.endswith("parquet") else pd.read_csv(work / path)
        b = pd.read_parquet(clean / path) if path.endswith("parquet") else pd.read_csv(clean / path)
        pd.testing.assert_frame_equal(a, b)
