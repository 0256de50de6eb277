# Parse-time helpers of the PEKA rules (workflow/rules/peka.smk): which caches a PEKA feature set
# reads, and the params that key its jobs. Cheap: no torch or PEFT import.
from histofuse.peka import workflow as peka_plan

PEKA_SETS = peka_plan.feature_sets(config)


def peka_encoder(wildcards):
    return PEKA_SETS[wildcards.pfeatures]


def peka_stores(wildcards):
    shards = PLAN.shards_of(PLAN.task_samples(wildcards.task))
    enc = peka_encoder(wildcards)
    needs_image = not peka_plan.uses_tokens(config, wildcards.pfeatures)
    return [f"results/features/{enc}/{s}.zarr" for s in shards] if needs_image else []


def peka_token_stores(wildcards):
    shards = PLAN.shards_of(PLAN.task_samples(wildcards.task))
    enc = peka_encoder(wildcards)
    tail = peka_plan.uses_tokens(config, wildcards.pfeatures)
    return [f"results/tokens/{enc}/{s}.zarr" for s in shards] if tail else []


def peka_manifests(wildcards):
    stores = peka_stores(wildcards) + peka_token_stores(wildcards)
    return [s.removesuffix(".zarr") + ".manifest.json" for s in stores]


def peka_json(wildcards):
    import json

    return json.dumps(config["peka"], sort_keys=True)


def tokens_key(wildcards):
    import json

    return json.dumps(
        {
            "embed": PLAN.embed_key(wildcards.encoder),
            "blocks": config["peka"]["tail_blocks"],
            "dtype": config["peka"]["tokens_dtype"],
        },
        sort_keys=True,
    )
