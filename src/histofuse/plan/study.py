"""What a run records before its jobs start (Snakefile ``onstart``; a study's Snakefile too).

Snakemake runs only the main Snakefile's ``onstart``: a study folder made by ``histofuse init``
uses the pipeline as a module, so its own Snakefile calls :func:`start_run` as well.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histofuse.plan import paths

if TYPE_CHECKING:
    from histofuse.plan.core import Plan

#: The record of the study whose outputs ``results/`` holds.
STUDY_RECORD = "results/study.json"


def start_run(config: dict[str, Any], plan: Plan | None = None) -> str | None:
    """Saves the shard registry and the study record; moves another study's report aside.

    The shard registry keeps each sample in its shard when samples are added. A study is its
    sample sheet and its task names: a run of another study in this folder schedules its own
    report, and until it is written the previous study's report is moved to
    ``results/report.previous`` so that it never reads as this study's.

    Args:
        config: The run's config (validated here again when ``plan`` is not given).
        plan: The run's plan; None plans it from ``config`` (a study's Snakefile, which does not
            see the module's plan).

    Returns:
        The warning to log when another study's report was moved aside, else None.
    """
    from histofuse.atomic import write_json

    if plan is None:
        from histofuse.config import load_schema, validate_config
        from histofuse.plan.core import Plan

        config = validate_config(config, load_schema())
        plan = Plan.from_config(config, paths.SHARD_REGISTRY)
    plan.save_registry(paths.SHARD_REGISTRY)
    study = {
        "samples": os.path.abspath(config["samples"]),
        "tasks": sorted(config["tasks"]),
        "bulk": sorted(config["bulk"]),
    }
    record = Path(STUDY_RECORD)
    previous = json.loads(record.read_text()) if record.exists() else study
    warning = None
    if previous != study and os.path.exists(paths.REPORT):
        shutil.rmtree(f"{paths.REPORT}.previous", ignore_errors=True)
        os.replace(paths.REPORT, f"{paths.REPORT}.previous")
        warning = (
            f"results/ holds another study's outputs (samples: {previous['samples']}); its"
            f" report was moved to {paths.REPORT}.previous. Keep studies apart with --directory."
        )
    write_json(study, record, indent=1)
    return warning
