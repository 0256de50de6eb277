# Parse-time set-up: validate the config, read the sample table once, plan shards and feature sets.
# Cheap by design: no torch, no slide is opened, nothing is globbed. Rules look their inputs and
# params up in PLAN (histofuse.plan) and their result paths in `paths` (histofuse.plan.paths).
import os

from histofuse.config import load_schema, validate_config
from histofuse.plan import Plan, paths

config = validate_config(config, load_schema())
PLAN = Plan.from_config(config, paths.SHARD_REGISTRY)
SAMPLES = PLAN.samples


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
    return f"--weights {source}" if source else ""


def embed_key(wildcards):
    return PLAN.embed_key(wildcards.encoder)


def parent_of_first_output(wildcards, output):
    return os.path.dirname(output[0]) or "."
