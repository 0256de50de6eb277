"""The SLURM profile as Snakemake resolves it: what each job of the demo would ask SLURM for.

A dry run with ``--workflow-profile profiles/slurm`` prints every job's resources after the
profile's defaults and per-rule settings are applied; nothing is submitted.
"""

from __future__ import annotations

import os
import re
import time

import pytest
import yaml
from test_workflow import REPO, snakemake

from histofuse.retry import refused_retry, user_error

PROFILE = REPO / "profiles/slurm/config.yaml"
PLACEHOLDERS = ("<account>", "<cpu-partition>", "<gpu-partition>")


def planned_resources(stdout: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job block of a dry run, local rules left out."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n)", stdout):
        rule = re.search(r"^(local)?rule (\S+):$", block, re.M)
        if rule is None or rule.group(1):
            continue
        line = re.search(r"^\s+resources: (.*)$", block, re.M)
        pairs = re.findall(r"(\w+)=([^,]*)", line.group(1)) if line else []
        jobs.append((rule.group(2), {k: v.strip() for k, v in pairs}))
    return jobs


@pytest.mark.parametrize("tiling_jobs", ["sample", "shard"])
def test_every_cluster_job_gets_memory_time_cpus_and_a_partition(tmp_path, tiling_jobs):
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["tiling"]["jobs"] = tiling_jobs
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = snakemake(
        tmp_path, "-n", "--workflow-profile", str(REPO / "profiles/slurm"), config=config
    )
    jobs = planned_resources(proc.stdout)
    rules = {rule for rule, _ in jobs}
    tile_rule = "tile" if tiling_jobs == "sample" else "tile_shard"
    assert {"demo_cohort", tile_rule, "embed", "fit", "report"} <= rules
    assert len(jobs) == sum(1 for _ in re.finditer(r"^rule \S+:$", proc.stdout, re.M))
    profile = yaml.safe_load(PROFILE.read_text())
    for rule, res in jobs:
        for key in ("mem_mb", "runtime", "slurm_partition", "slurm_account"):
            assert res.get(key), f"{rule} has no {key}: {res}"
        assert int(res["runtime"]) > 0 and int(res["mem_mb"]) >= 1000
        if rule in ("embed", "tokens"):
            # GPU jobs (features, PEKA's token cache): one GPU each on the GPU partition, CPUs
            # per GPU for the data loaders
            assert res["gpu"] == "1" and res["slurm_partition"] == "<gpu-partition>"
            assert int(res["cpus_per_gpu"]) >= 1
        else:
            assert res.get("gpu", "0") == "0", f"{rule} asks for a GPU"
            assert res["slurm_partition"] == "<cpu-partition>"
            assert int(res["cpus_per_task"]) >= 1
        # memory follows the attempt on rules that retry with more (first attempt here)
        expected = profile["set-resources"].get(rule, {}).get("mem_mb")
        if isinstance(expected, str):
            base = re.fullmatch(r"(\d+) \* attempt", expected)
            assert base, f"set-resources.{rule}.mem_mb = {expected!r}"
            assert int(res["mem_mb"]) == int(base.group(1))


def test_slurm_profile_reruns_on_cache_keys_not_code():
    profile = yaml.safe_load(PROFILE.read_text())
    local = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    # params carry the embed cache key and the task/head settings; code edits must not
    # invalidate days of embeddings
    for p in (profile, local):
        assert set(p["rerun-triggers"]) == {"mtime", "params", "input"}
    assert profile["executor"] == "slurm"
    embed_rule = (REPO / "workflow/rules/embed.smk").read_text()
    assert re.search(r"params:\n\s+key=embed_key,", embed_rule)


def test_readme_documents_every_profile_placeholder():
    text = PROFILE.read_text()
    readme = (REPO / "README.md").read_text()
    for placeholder in PLACEHOLDERS:
        assert placeholder in text
        assert placeholder in readme, f"README does not say what to put for {placeholder}"


def test_planned_resources_parses_a_dry_run_block():
    sample = (
        "[Mon Nov 23 22:41:02 2026]\nrule embed:\n    jobid: 2\n"
        "    resources: tmpdir=/tmp, mem_mb=32000, gpu=1, slurm_partition=<gpu-partition>\n"
        "[Mon Nov 23 22:41:02 2026]\nlocalrule all:\n    jobid: 0\n"
    )
    assert planned_resources(sample) == [
        (
            "embed",
            {"tmpdir": "/tmp", "mem_mb": "32000", "gpu": "1", "slurm_partition": "<gpu-partition>"},
        )
    ]


def test_slurm_profile_shows_failed_logs_and_retries():
    profile = yaml.safe_load(PROFILE.read_text())
    # SLURM's own reason for a failed job is often "Unknown"; the job's log says what went wrong
    assert profile["show-failed-logs"] is True
    assert profile["retries"] >= 1


def test_every_cluster_rule_refuses_a_retry_after_a_user_error():
    # retries are for infrastructure failures; each rule that runs on the cluster takes its
    # slurm_extra from the guard that refuses a retry whose first attempt ended in a user error
    rules = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        for block in re.split(r"\n\s*rule ", smk.read_text())[1:]:
            name = block.split(":", 1)[0]
            rules[name] = "slurm_extra=refused_retry_after_user_error," in block
    expected = {"demo_cohort", "tile", "tile_shard", "embed", "tokens", "fit", "bulk_fit"}
    assert expected | {"peka", "report"} <= set(rules)
    assert all(rules[name] for name in rules), rules


def write_log(path, text, age_s=0.0):
    path.write_text(text)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_a_log_that_ends_in_a_user_error_refuses_the_retry(tmp_path):
    since = time.time() - 60
    record = "2026-11-28 11:29:50,089 INFO histofuse.encoders.run: embed: 10 tiles\n"
    error = "histofuse: error: weights file w.pt could not be read as a checkpoint: Weights"
    # a user error, its message running over several lines as a library wrote it
    log = write_log(tmp_path / "user.log", f"{record}{error}\nUnsupported operand 110\n\n")
    assert user_error(log, since) == error
    assert refused_retry(log, 2, since) == f"--histofuse-user-error-not-retried={log}"
    # the first attempt is always submitted, whatever an earlier run left in its log
    assert refused_retry(log, 1, since) is None


@pytest.mark.parametrize(
    "text, age_s",
    [
        # killed (OOM killer, node failure, time limit) in the middle of the work
        ("2026-11-28 11:29:50,089 INFO histofuse.encoders.run: embed: reading\n", 0),
        # a crash that is not a user error
        ("Traceback (most recent call last):\n  File x\nRuntimeError: CUDA error\n", 0),
        # a sample's recorded error, then more work, then a kill
        (
            "histofuse: error: sample S1: no tissue (recorded)\n"
            "2026-11-28 11:29:50,089 INFO histofuse.slides.run: tile: S2\n",
            0,
        ),
        # an earlier run's user error: this attempt failed before its command wrote the log
        ("histofuse: error: weights file w.pt does not exist\n", 3600),
        ("", 0),
    ],
)
def test_other_failures_are_retried(tmp_path, text, age_s):
    log = write_log(tmp_path / "job.log", text, age_s)
    since = time.time() - 60
    assert user_error(log, since) is None
    assert refused_retry(log, 2, since) is None
    assert refused_retry(tmp_path / "never-written.log", 2, since) is None
