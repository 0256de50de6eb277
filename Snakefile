# histofuse: tile once, embed each encoder once into a Zarr cache, fit many heads, report.
# All logic lives in the `histofuse` package; rules only wire files to its CLI verbs.
import json
import os
import shutil

from histofuse.atomic import write_json
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


onstart:
    # Record which shard each sample went to, so adding samples never reshuffles finished shards.
    PLAN.save_registry(paths.SHARD_REGISTRY)
    # A study is its sample sheet and its task names. A run of another study in this folder
    # schedules its own report; until it is written, the previous study's report is moved to
    # results/report.previous so that it never reads as this study's (README: keep studies
    # apart with --directory).
    study = {
        "samples": os.path.abspath(config["samples"]),
        "tasks": sorted(config["tasks"]),
        "bulk": sorted(config["bulk"]),
    }
    record = "results/study.json"
    previous = json.loads(open(record).read()) if os.path.exists(record) else study
    if previous != study and os.path.exists(paths.REPORT):
        shutil.rmtree(f"{paths.REPORT}.previous", ignore_errors=True)
        os.replace(paths.REPORT, f"{paths.REPORT}.previous")
        logger.warning(
            f"results/ holds another study's outputs (samples: {previous['samples']}); its"
            f" report was moved to {paths.REPORT}.previous. Keep studies apart with --directory."
        )
    write_json(study, record, indent=1)


localrules:
    all,


rule all:
    default_target: True
    input:
        rules.report.output,
