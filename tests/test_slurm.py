"""The demo workflow through a real SLURM controller with the project's SLURM profile.

Uses ../shared/slurm/local-slurm.sh (a single-node SLURM from Debian's packages). The test starts
it when it is not running and stops it afterwards only if it started it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
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


def slurm_command(tmp_path: Path, config: Path, *extra: str) -> list[str]:
    """The snakemake call with the project's SLURM profile, its placeholders filled in."""
    return [
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
        *extra,
        "--set-threads",
        "embed=1",
        "fit=1",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--latency-wait",
        "10",
    ]


def small_config(tmp_path: Path, encoders: list[str], **weights: str) -> Path:
    cfg = sheet_task_config()
    cfg["demo"].update(patients=2, slides_per_patient=1)
    cfg["encoders"] = encoders
    if weights:
        cfg["weights"] = weights
    cfg["feature_sets"]["concat"] = []
    cfg["heads"] = {"hest": {"cap_components": True}}
    cfg["tasks"]["demo-spots"]["split"]["n_folds"] = 2
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config


def slurm_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def run_on_slurm(cmd: list[str], folder: Path) -> subprocess.CompletedProcess:
    """Runs the workflow on the cluster; cancels its jobs and fails after 10 minutes."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, env=slurm_env(), cwd=folder, timeout=600
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        pytest.fail("the SLURM run did not finish in 10 minutes")


def test_demo_runs_through_slurm(slurm, tmp_path):
    config = small_config(tmp_path, ["tiny-cnn"])
    cmd = slurm_command(tmp_path, config)
    proc = run_on_slurm(cmd, tmp_path)
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


def kill_first_embed(workdir: Path, encoder: str, stop: threading.Event) -> list[int]:
    """SIGKILLs the first `histofuse embed --encoder ENCODER` process running in WORKDIR.

    Stands in for the kernel's OOM killer (the local cluster has no cgroups): the job's command
    dies without a word in its log. Returns the killed process ids (one, or none).
    """
    killed: list[int] = []
    while not stop.is_set() and not killed:
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                cwd = Path(os.readlink(proc / "cwd"))
            except (OSError, ValueError):
                continue
            args = [a.decode(errors="replace") for a in argv]
            if (
                cwd == workdir
                and any(a.endswith("/histofuse") for a in args)
                and "embed" in args
                and encoder in args
            ):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
                break
        time.sleep(0.05)
    return killed


def submissions(out: str, rule: str, wildcards: str) -> list[str]:
    """SLURM job ids of a job's submissions, from Snakemake's console (its SLURM log path)."""
    pattern = rf"submitted with SLURM jobid (\d+) \(log: \S*/rule_{rule}/{wildcards}/"
    return re.findall(pattern, out)


def requested_memory(jobid: str) -> str:
    sacct = ["sacct", "-j", jobid, "-n", "-X", "-P", "-o", "ReqMem"]
    return subprocess.run(sacct, capture_output=True, text=True).stdout.strip()


def test_user_error_is_not_resubmitted_but_a_killed_job_is(slurm, tmp_path):
    # tiny-vit's weights file is not a checkpoint: a user error only the embed job sees
    # (exit 2, `histofuse: error: weights file … could not be read`). tiny-cnn's embed job is
    # killed once, as the OOM killer would: an infrastructure failure, retried at 2x memory.
    bad = tmp_path / "bad-weights.pt"
    bad.write_bytes(b"not a checkpoint")
    config = small_config(tmp_path, ["tiny-cnn", "tiny-vit"], **{"tiny-vit": str(bad)})
    cmd = slurm_command(tmp_path, config, "embed:mem_mb=1000 * attempt")
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(
        target=lambda: killed.extend(kill_first_embed(tmp_path, "tiny-cnn", stop)), daemon=True
    )
    killer.start()
    try:
        proc = run_on_slurm(cmd, tmp_path)
    finally:
        stop.set()
        killer.join()
    out = proc.stdout + proc.stderr
    assert killed, f"no tiny-cnn embed process was seen running: {out[-3000:]}"
    problems = []
    # the user error: one SLURM job only; its retry is refused by sbatch before it is queued
    vit = submissions(out, "embed", "tiny-vit_0000")
    if len(vit) != 1:
        problems.append(f"tiny-vit's embed was submitted {len(vit)} times: {vit}")
    if "unrecognized option '--histofuse-user-error-not-retried" not in out:
        problems.append("the retry after the user error was not refused at submission")
    # ... and the job's own error line is on the console, not only SLURM's "Reason: ..."
    shown = r"Logfile logs/embed/tiny-vit/0000.log:\n=+\nhistofuse: error: weights file"
    if not re.search(shown, out):
        problems.append("the failed job's log (`histofuse: error: …`) is not on the console")
    # the killed job: submitted again, at twice the memory, and finished
    cnn = submissions(out, "embed", "tiny-cnn_0000")
    if [requested_memory(j) for j in cnn] != ["1000M", "2000M"]:
        problems.append(
            f"tiny-cnn's embed submissions {cnn} asked for "
            f"{[requested_memory(j) for j in cnn]}, not 1000M then 2000M"
        )
    if not (tmp_path / "results/features/tiny-cnn/0000.manifest.json").is_file():
        problems.append("tiny-cnn's retried embed did not finish")
    assert proc.returncode != 0, out[-3000:]  # tiny-vit's features, hence the report, are missing
    assert not problems, "\n".join(problems) + "\n" + out[-8000:]
