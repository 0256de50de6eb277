# histofuse: tile once, embed each encoder once into a Zarr cache, fit many heads, report.
# All logic lives in the `histofuse` package; rules only wire files to its CLI verbs.
import os

from histofuse.plan.study import start_run
from snakemake.logging import logger
from snakemake.utils import min_version

min_version("9.11")


# The demo config applies only when no --configfile is given: a user's config replaces it whole
# instead of being merged into it (Snakemake's default for a workflow `configfile:`), so no demo
# task, head or section ever runs on a user's samples. `--config KEY=VALUE` alone edits the demo.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config/config.yaml")


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
include: "workflow/rules/slides.smk"


onstart:
    # The shard registry (adding samples never reshuffles finished shards) and the study record
    # (another study's report is moved to results/report.previous): histofuse.plan.study.
    warning = start_run(config, PLAN)
    if warning:
        logger.warning(warning)


localrules:
    all,


# A study with tasks ends in its report; a study without (slide-only) in every encoder's
# features of every slide, the tiling QC pictures and the slides page.
rule all:
    default_target: True
    input:
        (
            [*PLAN.all_feature_manifests(), *PLAN.qc_thumbnails(), *rules.slides.output]
            if PLAN.slide_only
            else rules.report.output
        ),
