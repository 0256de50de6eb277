"""The demo workflow through a real SLURM controller with the project's SLURM profile.

Uses ../shared/slurm/local-slurm.sh (a single-node SLURM from Debian's packages). The test starts
it when it is not running and stops it afterwards only if it started it.
"""

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
SCRIPT = REPO.parent / "shared" / "slurm" / "local-slurm.sh"
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm():
    if not SCRIPT.is_file():
        pytest.skip(f"no SLURM starter at {SCRIPT}")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("installing SLURM needs root and apt-get")
    running = (
        subprocess.run(["squeue"], capture_output=True).returncode == 0
        if shutil.which("squeue")
        else False
    )
    if not running:
        start = subprocess.run(
            ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900
        )
        if start.returncode != 0:
            pytest.skip(
                f"SLURM could not be started here: {start.stdout[-500:]}{start.stderr[-500:]}"
            )
    yield
    if not running:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=300)


def test_demo_runs_through_slurm(slurm, tmp_path):
    cfg = sheet_task_config()
    cfg["demo"].update(patients=2, slides_per_patient=1)
    cfg["encoders"] = ["tiny-cnn"]
    cfg["feature_sets"]["concat"] = []
    cfg["heads"] = {"hest": {"cap_components": True}}
    cfg["tasks"]["demo-spots"]["split"]["n_folds"] = 2
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(config),
        "--workflow-profile",
        str(REPO / "profiles/slurm"),
        "--jobs",
        "2",
        # the placeholders of the profile, filled for the local one-node cluster
        "--default-resources",
        "slurm_partition=debug",
        "slurm_account=root",
        "mem_mb=1000",
        "runtime=10",
        "cpus_per_task=1",
        "--set-resources",
        "embed:slurm_partition=debug",
        "embed:cpus_per_gpu=1",
        "embed:mem_mb=2000",
        "tile:cpus_per_task=1",
        "fit:cpus_per_task=1",
        "--set-threads",
        "embed=1",
        "fit=1",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--latency-wait",
        "10",
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        pytest.fail("the SLURM run did not finish in 10 minutes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # every rule but the local `all` ran as a SLURM job
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", out)
    assert len(submitted) == 6, out[-3000:]  # demo_cohort, 2 × tile, embed, fit, report
    summary = pd.read_csv(tmp_path / "results/report/summary.csv")
    assert set(summary["features"]) == {"tiny-cnn"}
    assert summary["pearson_mean"].notna().all() and (summary["n_folds"] == 2).all()
    log = (tmp_path / "logs/embed/tiny-cnn/0000.log").read_text()
    assert "embedded" in log
