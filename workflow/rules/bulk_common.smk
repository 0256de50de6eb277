# Parse-time set-up of the slide-level bulk tasks (config `bulk`): the job list and the input and
# params functions of the bulk_fit jobs; cheap (no torch, no file is read).
from histofuse.bulk.plan import bulk_jobs, bulk_metrics_path, bulk_task_json, check_bulk_tables

BULK_JOBS = bulk_jobs(config, PLAN.feature_sets)
check_bulk_tables(
    config,
    (
        {os.path.join(os.path.dirname(config["samples"]), "bulk.csv")}
        if config["demo"]["enabled"]
        else set()
    ),
)


def all_bulk_metrics(wildcards=None):
    return [bulk_metrics_path(*job) for job in BULK_JOBS]


def all_bulk_predictions(wildcards=None):
    return [
        m.replace("results/bulk/metrics/", "results/bulk/predictions/", 1)
        for m in all_bulk_metrics()
    ]


def bulk_table(wildcards):
    return config["bulk"][wildcards.task]["table"]


def bulk_manifests(wildcards):
    if wildcards.agg == "slide":
        return []
    shards = PLAN.shards_of(config["bulk"][wildcards.task].get("samples") or list(SAMPLES.index))
    return [
        f"results/features/{e}/{s}.manifest.json"
        for e in PLAN.feature_sets[wildcards.features]
        for s in shards
    ]


def bulk_embeddings(wildcards):
    if wildcards.agg != "slide":
        return []
    return config["bulk"][wildcards.task]["slide_embeddings"][wildcards.features]


def bulk_sources(wildcards, input):
    import shlex

    if wildcards.agg == "slide":
        return "--embeddings " + " ".join(shlex.quote(str(f)) for f in input.embeddings)
    stores = [m.removesuffix(".manifest.json") + ".zarr" for m in input.manifests]
    return "--stores " + " ".join(shlex.quote(s) for s in stores)


def bulk_task_params(wildcards):
    return bulk_task_json(config["bulk"][wildcards.task])


def bulk_head_params(wildcards):
    import json

    spec = config["bulk"][wildcards.task]
    params = dict(spec["heads"][wildcards.head] or {})
    if wildcards.agg == "abmil":
        params.update(spec.get("abmil") or {})
    return json.dumps(params, sort_keys=True)
