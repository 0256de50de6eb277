# histofuse: tile once, embed each encoder once into a Zarr cache, fit many heads, report.
# All logic lives in the `histofuse` package; rules only wire files to its CLI verbs.
from snakemake.utils import min_version

min_version("9.11")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/tile.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/bulk_common.smk"
include: "workflow/rules/bulk.smk"
include: "workflow/rules/peka_common.smk"
include: "workflow/rules/peka.smk"
include: "workflow/rules/report.smk"


onstart:
    # Record which shard each sample went to, so adding samples never reshuffles finished shards.
    PLAN.save_registry(paths.SHARD_REGISTRY)


localrules:
    all,


rule all:
    default_target: True
    input:
        rules.report.output,
