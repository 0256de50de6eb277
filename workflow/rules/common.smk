# Parse-time set-up: validate the config, read the sample table once, plan shards and feature sets.
# Cheap by design: no torch, no slide is opened, nothing is globbed. Rules look their inputs and
# params up in PLAN (histofuse.plan) and their result paths in `paths` (histofuse.plan.paths).
import os
import shlex
import sys
import time

from histofuse.config import load_schema, validate_config
from histofuse.errors import HistofuseError, one_line
from histofuse.plan import Plan, paths
from histofuse.plan.missing import missing_results
from histofuse.retry import refused_retry, user_error
from snakemake.io import apply_wildcards
from snakemake.logging import logger

try:
    config = validate_config(config, load_schema())
    PLAN = Plan.from_config(config, paths.SHARD_REGISTRY)
    # The parts checked when first asked for, asked for here so that their errors are caught too.
    PLAN.tiling_spec, PLAN.bulk, PLAN.peka
    [PLAN.weights_sha256(encoder) for encoder in config["weights"]]
except HistofuseError as exc:
    # One line, without the Python frames Snakemake prints for an exception in a Snakefile.
    print(f"histofuse: error: {one_line(str(exc))}", file=sys.stderr)
    sys.exit(2)
SAMPLES = PLAN.samples

if not workflow.remote_exec:  # once per run, not in every cluster job's own parse
    for warning in missing_results(PLAN):
        print(f"histofuse: warning: {warning}", file=sys.stderr)


wildcard_constraints:
    sample=r"[A-Za-z0-9._-]+",
    encoder=r"[A-Za-z0-9._-]+",
    shard=r"\d{4}",
    task=r"[A-Za-z0-9._-]+",
    features=r"[A-Za-z0-9._+-]+",
    head=r"[A-Za-z0-9._-]+",


def weights_input(wildcards):
    source = config["weights"].get(wildcards.encoder)
    return [source] if source and not source.startswith("hf-hub:") else []


def weights_flag(wildcards):
    source = config["weights"].get(wildcards.encoder)
    return f"--weights {shlex.quote(source)}" if source else ""


def embed_key(wildcards):
    return PLAN.embed_key(wildcards.encoder)


def parent_of_first_output(wildcards, output):
    return os.path.dirname(output[0]) or "."




def on_error_flag(wildcards, output):
    """`tiling.on_error`, a run policy. Taking `output` makes it a derived param, which Snakemake
    leaves out of its params rerun trigger: changing the policy reruns no tile job."""
    return config["tiling"]["on_error"]


def slide_of(wildcards):
    return SAMPLES.at[wildcards.sample, "slide"]


def expression_of(wildcards):
    return SAMPLES.at[wildcards.sample, "expression"]


def patches_of(wildcards):
    patches = SAMPLES.at[wildcards.sample, "patches"] if "patches" in SAMPLES else ""
    return patches if isinstance(patches, str) else ""


def expression_input(wildcards):
    expression = expression_of(wildcards)
    return [expression] if expression else []


def tile_inputs(wildcards):
    patches = patches_of(wildcards)
    if patches:
        return {"patches": ancient(patches)}
    return {
        "slide": ancient(slide_of(wildcards)),
        "expression": ancient(expression_input(wildcards)),
    }


def tile_source(wildcards, input):
    """`--patches X`, or `--slide X` with the sample's `--expression` file if it has one."""
    if "patches" in input.keys():
        return f"--patches {shlex.quote(input.patches)}"
    flags = f"--slide {shlex.quote(input.slide)}"
    expression = expression_of(wildcards)
    return flags + (f" --expression {shlex.quote(expression)}" if expression else "")


def mpp_flag(wildcards):
    mpp = SAMPLES.at[wildcards.sample, "mpp"] if "mpp" in SAMPLES else None
    if mpp is None or mpp != mpp:
        return ""
    source = SAMPLES.at[wildcards.sample, "mpp_source"] if "mpp_source" in SAMPLES else ""
    flag = f"--mpp {shlex.quote(str(mpp))}"
    return flag + (f" --mpp-source {shlex.quote(source)}" if isinstance(source, str) and source else "")


def shard_sample_flags(wildcards):
    return " ".join(f"--sample {shlex.quote(s)}" for s in PLAN.shards[wildcards.shard])


def shard_hest_bench_flags(wildcards):
    members = set(PLAN.shards[wildcards.shard])
    return " ".join(
        "--hest-bench " + shlex.quote(f"{task}={spec['hest_bench']}")
        for task, spec in config["tasks"].items()
        if spec.get("hest_bench") and members & set(PLAN.task_samples(task))
    )


def shard_demo_inputs(wildcards):
    # The generated demo's files of a shard, so that a grown demo cohort is written before its new
    # shard is tiled. A user's sheet lists files that exist (checked at parse time); listing them
    # all would double the DAG's build time at 10k slides.
    if not config["demo"]["enabled"]:
        return []
    rows = SAMPLES.loc[PLAN.shards[wildcards.shard]]
    return [path for col in ("slide", "expression") for path in rows[col] if path]


def shard_tiles(wildcards):
    """The tiles of an embed shard: its samples' files, or the shard's tiling folder."""
    if config["tiling"]["jobs"] == "shard":
        return [f"results/tiles/shards/{wildcards.shard}"]
    return [f"results/tiles/{s}.parquet" for s in PLAN.shards[wildcards.shard]]


# Retries (profiles/slurm: `retries: 1`) are for infrastructure failures. A job whose log ends
# with a user error (`histofuse: error: …`) would fail the same way again: its retry gets a
# `slurm_extra` that sbatch refuses at once, so no second job (for embed, a GPU at twice the
# memory) is queued. Rules take it as `slurm_extra=refused_retry_after_user_error`.
RUN_STARTED = time.time()
_REFUSED_RETRIES = set()


def refused_retry_after_user_error(wildcards, attempt, rulename):
    """`slurm_extra` of a job: None, or on a retry after a user error an option sbatch refuses."""
    if attempt <= 1:
        return None
    log = apply_wildcards(str(workflow.get_rule(rulename).log[0]), wildcards)
    extra = refused_retry(log, attempt, RUN_STARTED)
    if extra and log not in _REFUSED_RETRIES:
        _REFUSED_RETRIES.add(log)
        logger.warning(
            f"{rulename} is not resubmitted: its log {log} ends with a user error, which a retry"
            f" would repeat ({user_error(log, RUN_STARTED)}). Fix the cause and run again."
        )
    return extra
