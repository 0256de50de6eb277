"""The workflow's bulk jobs, named at parse time (no torch, no files read).

Per bulk task: every tile feature set (or those listed in ``feature_sets``) × every aggregation
× every head, plus every slide-embedding feature set × every head. Fusion heads run only on
feature sets of two or more encoders (or embedding files). The report's ``head`` is
``{aggregation}-{head}`` (``mean-mlp``, ``abmil-mlp``, ``slide-mlp``).
"""

from __future__ import annotations

import json
from typing import Any

from histofuse.errors import HistofuseError


def bulk_jobs(
    config: dict[str, Any], feature_sets: dict[str, list[str]]
) -> list[tuple[str, str, str, str]]:
    """(task, features, aggregation, head) of every bulk fit job.

    Raises:
        HistofuseError: If a task names an unknown feature set, or an embedding set's name
            clashes with a tile feature set.
    """
    from histofuse.heads.names import FUSION_HEADS

    jobs = []
    for task, spec in (config.get("bulk") or {}).items():
        heads = spec.get("heads") or {"mlp": {}}
        chosen = spec.get("feature_sets")
        if chosen is None:
            chosen = list(feature_sets)
        unknown = sorted(set(chosen) - set(feature_sets))
        if unknown:
            raise HistofuseError(
                f"config `bulk.{task}.feature_sets` names {unknown}, which are not feature sets "
                f"({', '.join(feature_sets)})"
            )
        for fs in chosen:
            for agg in spec.get("aggregations", ["mean", "abmil"]):
                for head in heads:
                    if head not in FUSION_HEADS or len(feature_sets[fs]) > 1:
                        jobs.append((task, fs, agg, head))
        for name, files in (spec.get("slide_embeddings") or {}).items():
            if name in feature_sets:
                raise HistofuseError(
                    f"config `bulk.{task}.slide_embeddings.{name}` has the name of a tile "
                    "feature set; rename it"
                )
            for head in heads:
                if head not in FUSION_HEADS or len(files) > 1:
                    jobs.append((task, name, "slide", head))
    return jobs


def check_bulk_tables(config: dict[str, Any], produced: set[str]) -> None:
    """Stops at parse time when a bulk task's table is neither on disk nor made by the workflow.

    Raises:
        HistofuseError: Naming the task's ``table`` key and the missing file.
    """
    import os

    made = {os.path.normpath(p) for p in produced}
    for task, spec in (config.get("bulk") or {}).items():
        table = spec["table"]
        if os.path.normpath(table) not in made and not os.path.isfile(table):
            raise HistofuseError(
                f"config `bulk.{task}.table`: {table} does not exist; point it at your bulk table "
                "or remove the task"
            )


def bulk_metrics_path(task: str, features: str, aggregation: str, head: str) -> str:
    """Metrics file of one bulk job (predictions: ``metrics`` → ``predictions``)."""
    return f"results/bulk/metrics/{task}/{features}/{aggregation}-{head}.parquet"


def bulk_task_json(spec: dict[str, Any]) -> str:
    """The task settings that the fit uses (not its heads or feature sets), as JSON."""
    skip = ("heads", "abmil", "feature_sets", "aggregations", "slide_embeddings", "table")
    return json.dumps({k: v for k, v in spec.items() if k not in skip}, sort_keys=True)
