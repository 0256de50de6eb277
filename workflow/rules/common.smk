# Parse-time set-up: validate the config, read the sample table once, plan shards and feature sets.
# Cheap by design: no torch, no slide is opened, nothing is globbed.
import os

from histofuse.config import load_schema, validate_config
from histofuse.plan import Plan

config = validate_config(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))
SHARD_REGISTRY = "results/shards.tsv"
PLAN = Plan.from_config(config, SHARD_REGISTRY)
SAMPLES = PLAN.samples


wildcard_constraints:
    sample=r"[A-Za-z0-9._-]+",
    encoder=r"[A-Za-z0-9._-]+",
    shard=r"\d{4}",
    task=r"[A-Za-z0-9._-]+",
    features=r"[A-Za-z0-9._+-]+",
    head=r"[A-Za-z0-9._-]+",


def shard_sample_flags(wildcards):
    return " ".join(f"--sample {s}" for s in PLAN.shards[wildcards.shard])


def slide_of(wildcards):
    return SAMPLES.at[wildcards.sample, "slide"]


def expression_of(wildcards):
    return SAMPLES.at[wildcards.sample, "expression"]


def mpp_flag(wildcards):
    mpp = SAMPLES.at[wildcards.sample, "mpp"] if "mpp" in SAMPLES else None
    return "" if mpp is None or mpp != mpp else f"--mpp {mpp}"


def shard_tiles(wildcards):
    if config["tiling"]["jobs"] == "shard":
        return [f"results/tiles/shards/{wildcards.shard}"]
    return [f"results/tiles/{s}.parquet" for s in PLAN.shards[wildcards.shard]]


def weights_input(wildcards):
    source = config["weights"].get(wildcards.encoder)
    return [source] if source and not source.startswith("hf-hub:") else []


def weights_flag(wildcards):
    source = config["weights"].get(wildcards.encoder)
    return f"--weights {source}" if source else ""


def embed_key(wildcards):
    return PLAN.embed_key(wildcards.encoder)


def feature_manifests(wildcards):
    shards = PLAN.shards_of(PLAN.task_samples(wildcards.task))
    return [
        f"results/features/{e}/{s}.manifest.json"
        for e in PLAN.feature_sets[wildcards.features]
        for s in shards
    ]


def feature_stores(wildcards):
    return [m.removesuffix(".manifest.json") + ".zarr" for m in feature_manifests(wildcards)]


def task_json(wildcards):
    import json

    return json.dumps(config["tasks"][wildcards.task], sort_keys=True)


def head_params(wildcards):
    import json

    return json.dumps(config["heads"][wildcards.head] or {}, sort_keys=True)


def all_metrics(wildcards=None):
    from histofuse.heads.names import FUSION_HEADS
    from histofuse.peka.workflow import metrics_files as peka_metrics

    return [
        f"results/metrics/{task}/{features}/{head}.parquet"
        for task in config["tasks"]
        for features in PLAN.feature_sets
        for head in config["heads"]
        if head not in FUSION_HEADS or len(PLAN.feature_sets[features]) > 1
    ] + peka_metrics(config)


def parent_of_first_output(wildcards, output):
    return os.path.dirname(output[0]) or "."


def all_predictions(wildcards=None):
    return [m.replace("results/metrics/", "results/predictions/", 1) for m in all_metrics()]


def all_qc_thumbnails(wildcards=None):
    if config["tiling"]["jobs"] != "sample":
        return []
    return [f"results/tiles/{s}.qc.png" for s in SAMPLES.index]


def report_options(wildcards):
    import json

    return json.dumps(config["report"], sort_keys=True)


def expression_input(wildcards):
    expression = expression_of(wildcards)
    return [expression] if expression else []


def tiling_flags(wildcards):
    import json
    import shlex

    t = config["tiling"]
    flags = f"--mode {t['mode']} --min-tissue {t['min_tissue']}"
    if t.get("stride_um") is not None:
        flags += f" --stride-um {t['stride_um']}"
    if hasattr(wildcards, "sample") and expression_of(wildcards):
        flags += f" --expression {shlex.quote(expression_of(wildcards))}"
    return flags + f" --tissue {shlex.quote(json.dumps(t['tissue'], sort_keys=True))}"
