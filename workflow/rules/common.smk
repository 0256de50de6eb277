# Parse-time set-up: validate the config, read the sample table once, plan shards and feature sets.
# Cheap by design: no torch, no slide is opened, nothing is globbed.
import os
import re

from histofuse.config import load_schema, validate_config
from histofuse.plan import Plan

config = validate_config(config, load_schema())
SHARD_REGISTRY = "results/shards.tsv"
PLAN = Plan.from_config(config, SHARD_REGISTRY)
SAMPLES = PLAN.samples
# The fit rule's feature sets, by name: PEKA's metrics share its path pattern.
FIT_FEATURES = "|".join(map(re.escape, PLAN.feature_sets)) or "(?!)"


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


def feature_manifests(wildcards):
    shards = PLAN.task_shards(wildcards.task)
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


def fit_memory_flag(wildcards):
    """`--memory-budget-mb N` when `fit.memory_budget_mb` is set (features over it are streamed)."""
    budget = config["fit"]["memory_budget_mb"]
    return "" if budget is None else f"--memory-budget-mb {budget}"


def all_metrics(wildcards=None):
    from histofuse.heads.names import FUSION_HEADS
    from histofuse.peka.workflow import metrics_files as peka_metrics

    return [
        f"results/metrics/{task}/{features}/{head}.parquet"
        for task in config["tasks"]
        for features in PLAN.feature_sets
        for head in config["heads"]
        if head not in FUSION_HEADS or len(PLAN.feature_sets[features]) > 1
        if head in (config["tasks"][task].get("heads") or config["heads"])
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


# HEST-Bench tasks (`tasks.<name>.hest_bench`): pre-cut patches as the tile source, and the
# folder's split files and gene list as inputs of the task's fit jobs.
def task_bench_files(wildcards):
    from histofuse.hest_bench import bench_files

    folder = config["tasks"][wildcards.task].get("hest_bench")
    if not folder:
        return []
    demo = os.path.join(os.path.dirname(config["samples"]), "hest-bench")
    if config["demo"]["enabled"] and os.path.normpath(folder) == os.path.normpath(demo):
        # the demo's folder may not exist yet: list the files its generator will write, so
        # the input set is the same before and after generation
        return [f for f in demo_hest_bench_outputs() if f.endswith((".csv", "var_50genes.json"))]
    return bench_files(folder)


def demo_hest_bench_outputs():
    from histofuse.demo import demo_hest_bench_ids

    if not config["demo"]["hest_bench"]:
        return []
    folder = os.path.join(os.path.dirname(config["samples"]), "hest-bench")
    ids = demo_hest_bench_ids(config["demo"]["patients"], config["demo"]["slides_per_patient"])
    files = [os.path.join(folder, "patches", f"{s}.h5") for s in ids]
    files += [os.path.join(folder, "adata", f"{s}.h5ad") for s in ids]
    files += [
        os.path.join(folder, "splits", f"{side}_{i}.csv")
        for i in range(config["demo"]["patients"])
        for side in ("train", "test")
    ]
    return files + [os.path.join(folder, f) for f in ("var_50genes.json", "mean_50genes.json")]


def demo_hest_bench_flags():
    if not config["demo"]["hest_bench"]:
        return ""
    t = config["tiling"]
    return (
        f"--hest-bench --hest-bench-px {round(t['patch_um'] / t['target_mpp'])}"
        f" --hest-bench-mpp {t['target_mpp']}"
    )
