# Parse-time set-up of the PEKA rules (workflow/rules/peka.smk): the plan's PEKA feature sets,
# checked once, and the params that key the token cache. Cheap: no torch or PEFT import.
from histofuse.plan.names import PEKA_PATTERN

PEKA = PLAN.peka


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
