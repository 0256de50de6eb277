"""The workflow's slide-level bulk jobs, named at parse time (no torch, no files read).

Per bulk task: every tile feature set (or those listed in ``feature_sets``) × every aggregation
× every head, plus every slide-embedding feature set × every head. Fusion heads run only on
feature sets of two or more encoders (or embedding files). The report's ``head`` is
``{aggregation}-{head}`` (``mean-mlp``, ``abmil-mlp``, ``slide-mlp``).
"""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING, Any

from histofuse.errors import HistofuseError
from histofuse.plan import paths
from histofuse.plan.core import as_json

if TYPE_CHECKING:
    from histofuse.plan.core import Plan

#: The aggregation that reads slide embeddings from files instead of the feature cache.
SLIDE = "slide"


def _tile_jobs(
    task: str, spec: dict[str, Any], feature_sets: dict[str, list[str]], fusion: frozenset[str]
) -> list[tuple[str, str, str, str]]:
    chosen = spec.get("feature_sets")
    if chosen is None:
        chosen = list(feature_sets)
    unknown = sorted(set(chosen) - set(feature_sets))
    if unknown:
        raise HistofuseError(
            f"config `bulk.{task}.feature_sets` names {unknown}, which are not feature sets "
            f"({', '.join(feature_sets)})"
        )
    return [
        (task, fs, agg, head)
        for fs in chosen
        for agg in spec.get("aggregations", ["mean", "abmil"])
        for head in spec.get("heads") or {"mlp": {}}
        if head not in fusion or len(feature_sets[fs]) > 1
    ]


def _embedding_jobs(
    task: str, spec: dict[str, Any], feature_sets: dict[str, list[str]], fusion: frozenset[str]
) -> list[tuple[str, str, str, str]]:
    jobs = []
    for name, files in (spec.get("slide_embeddings") or {}).items():
        if name in feature_sets:
            raise HistofuseError(
                f"config `bulk.{task}.slide_embeddings.{name}` has the name of a tile "
                "feature set; rename it"
            )
        heads = spec.get("heads") or {"mlp": {}}
        jobs += [(task, name, SLIDE, h) for h in heads if h not in fusion or len(files) > 1]
    return jobs


def bulk_jobs(
    config: dict[str, Any], feature_sets: dict[str, list[str]]
) -> list[tuple[str, str, str, str]]:
    """(task, features, aggregation, head) of every bulk fit job.

    Raises:
        HistofuseError: If a task names an unknown feature set, or an embedding set's name
            clashes with a tile feature set.
    """
    from histofuse.heads.names import FUSION_HEADS

    fusion = frozenset(FUSION_HEADS)
    jobs = []
    for task, spec in (config.get("bulk") or {}).items():
        jobs += _tile_jobs(task, spec, feature_sets, fusion)
        jobs += _embedding_jobs(task, spec, feature_sets, fusion)
    return jobs


def check_bulk_tables(config: dict[str, Any], produced: set[str]) -> None:
    """Stops at parse time when a bulk task's table is neither on disk nor made by the workflow.

    Raises:
        HistofuseError: Naming the task's ``table`` key and the missing file.
    """
    made = {os.path.normpath(p) for p in produced}
    for task, spec in (config.get("bulk") or {}).items():
        table = spec["table"]
        if os.path.normpath(table) not in made and not os.path.isfile(table):
            raise HistofuseError(
                f"config `bulk.{task}.table`: {table} does not exist; point it at your bulk table "
                "or remove the task"
            )


def bulk_task_json(spec: dict[str, Any]) -> str:
    """The task settings that the fit uses (not its heads or feature sets), as JSON."""
    skip = ("heads", "abmil", "feature_sets", "aggregations", "slide_embeddings", "table")
    return as_json({k: v for k, v in spec.items() if k not in skip})


def sources_flag(aggregation: str, embeddings: list[str], manifests: list[str]) -> str:
    """What a bulk job reads: ``--embeddings FILE…`` (slide) or ``--stores STORE…`` (tiles)."""
    if aggregation == SLIDE:
        return "--embeddings " + " ".join(shlex.quote(str(f)) for f in embeddings)
    return "--stores " + " ".join(shlex.quote(paths.store_of(m)) for m in manifests)


class BulkPlan:
    """The bulk jobs of a plan and the inputs and params of each (checked when built).

    Attributes:
        jobs: (task, features, aggregation, head) of every ``bulk_fit`` job.
    """

    def __init__(self, plan: Plan) -> None:
        """Plans the bulk jobs of ``plan``.

        Raises:
            HistofuseError: For an unknown feature set, a clashing embedding set's name, or a
                table that is neither on disk nor written by the demo generator.
        """
        self._plan = plan
        self._config = plan.config.get("bulk") or {}
        self.jobs = bulk_jobs(plan.config, plan.feature_sets)
        check_bulk_tables(plan.config, {str(plan.demo.bulk_table)} if plan.demo else set())

    def metrics_files(self) -> list[str]:
        """Metrics file of every bulk job."""
        return [paths.bulk_metrics(*job) for job in self.jobs]

    def prediction_files(self) -> list[str]:
        """Predictions file of every bulk job, in the order of :meth:`metrics_files`."""
        return [paths.bulk_predictions(*job) for job in self.jobs]

    def table(self, task: str) -> str:
        """A task's bulk table."""
        return self._config[task]["table"]

    def manifests(self, task: str, features: str, aggregation: str) -> list[str]:
        """The feature stores' manifests a tile-feature job reads (none for slide embeddings)."""
        if aggregation == SLIDE:
            return []
        plan = self._plan
        shards = plan.shards_of(self._config[task].get("samples") or list(plan.samples.index))
        return [paths.features_manifest(e, s) for e in plan.feature_sets[features] for s in shards]

    def embeddings(self, task: str, features: str, aggregation: str) -> list[str]:
        """The slide-embedding files a ``slide`` job reads (none for tile features)."""
        if aggregation != SLIDE:
            return []
        return self._config[task]["slide_embeddings"][features]

    def task_json(self, task: str) -> str:
        """A task's ``--task-json``: see :func:`bulk_task_json`."""
        return bulk_task_json(self._config[task])

    def head_json(self, task: str, aggregation: str, head: str) -> str:
        """A job's ``--head-params``: the head's settings, ABMIL's added for ``abmil``."""
        spec = self._config[task]
        params = dict(spec["heads"][head] or {})
        if aggregation == "abmil":
            params.update(spec.get("abmil") or {})
        return as_json(params)
