"""The fold runner: one task's folds, heads and scores, written once for every stage.

A stage plugs two strategies into :func:`run_task`:

* its **rows** (:class:`Rows`): what a row is (a spot of a sample, or a slide scored per case),
  the folds over the rows, the values target genes are chosen on, the targets of the chosen
  genes, and how a fold's predictions are scored;
* its **model** (:class:`FoldModel`): how a fold's features are made (cached features, a PEKA
  student trained on the fold, mean-pooled or ABMIL bags of a slide) and which head fits them.

``fit`` is spot rows (:mod:`histofuse.evaluation.spots`) with cached features
(:mod:`histofuse.fit`); ``peka`` is spot rows with a student per fold
(:mod:`histofuse.peka.run`); ``bulk-fit`` is slide rows with slide vectors or bags
(:mod:`histofuse.bulk.evaluate`). The runner chooses each fold's genes, fits, scores and writes
the metrics and predictions files with their metadata.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError
from histofuse.settings import Genes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """One fold of a task: its seed (the ``seed`` column), number and row positions."""

    seed: int
    fold: int
    train: np.ndarray
    test: np.ndarray


class Rows(Protocol):
    """The rows of a task, aligned with their targets (see the module docstring)."""

    @property
    def genes(self) -> Genes:
        """How the target genes are chosen."""

    @property
    def genes_source(self) -> str:
        """Where the targets come from, for messages (``expression files``, ``table``)."""

    @property
    def gene_basis(self) -> pd.DataFrame:
        """The values (rows × all genes) that the most variable genes are chosen on."""

    def folds(self) -> list[Fold]:
        """Every (seed, fold) of the task."""

    def targets(self, genes: list[str]) -> np.ndarray:
        """Targets of all rows (rows × genes)."""

    def score(
        self, fold: Fold, genes: list[str], y: np.ndarray, pred: np.ndarray
    ) -> tuple[list[pd.DataFrame], pd.DataFrame]:
        """Labelled per-gene metrics of a fold (may be none yet) and its predictions table."""

    def finish(self) -> list[pd.DataFrame]:
        """Metrics scored over several folds, once every fold has been scored."""

    def meta(self) -> dict[str, Any]:
        """Metadata of the metrics file about the task and its rows."""


class FoldModel(Protocol):
    """A fold's features and head (see the module docstring)."""

    @property
    def head(self) -> str:
        """The ``head`` column of the metrics."""

    def fit_predict(self, fold: Fold, y: np.ndarray, genes: list[str]) -> np.ndarray:
        """Fits on the fold's training rows and predicts its test rows (test rows × genes)."""

    def meta(self) -> dict[str, Any]:
        """Metadata of the metrics file about the features and the head."""


@dataclass(frozen=True)
class Outputs:
    """Names and files of one job: ``task`` and ``features`` columns, metrics, predictions."""

    task: str
    features: str
    metrics: str | Path
    predictions: str | Path


def select_genes(
    values: pd.DataFrame, genes: Genes, train: np.ndarray, source: str = "targets"
) -> list[str]:
    """The target genes of one fold.

    Args:
        values: The values genes are chosen on, rows × all genes (``log1p`` counts of spots,
            transformed bulk values of slides).
        genes: ``list`` (fixed genes), else the ``top_k`` most variable genes of the training
            rows (``select_on: train``) or of all rows (``select_on: all``, HEST-Benchmark's
            ``var_50genes.json``; test rows then inform the selection).
        train: Training rows of the fold.
        source: Where the values come from, for the message of a bad ``list``.

    Raises:
        HistofuseError: If ``list`` names genes that ``values`` lacks.
    """
    from histofuse.data.expression import top_variable_genes

    if genes.list:
        absent = sorted(set(genes.list) - set(values.columns))
        if absent:
            raise HistofuseError(
                f"`genes.list` names genes not in the {source}: {absent[:5]}; fix the list"
            )
        return list(genes.list)
    rows = values if genes.select_on == "all" else values.iloc[train]
    return top_variable_genes(rows, int(genes.top_k))


def run_task(rows: Rows, model: FoldModel, out: Outputs, started: float) -> pd.DataFrame:
    """Runs every fold of a task and writes its metrics and predictions files.

    Args:
        rows: The task's rows and targets.
        model: The fold's features and head.
        out: Names and output files.
        started: :func:`time.perf_counter` when the job started (for the ``seconds`` entry).

    Returns:
        The metrics table written (:data:`~histofuse.evaluation.scoring.METRICS_COLUMNS`).
    """
    from histofuse.atomic import write_parquet
    from histofuse.evaluation.scoring import metrics_table

    folds = rows.folds()
    metrics, predictions, fold_genes = [], [], {}
    for fold in folds:
        n = sum(f.seed == fold.seed for f in folds)
        log.info(
            "seed %d, fold %d of %d: %d train, %d test rows",
            fold.seed,
            fold.fold + 1,
            n,
            len(fold.train),
            len(fold.test),
        )
        genes = select_genes(rows.gene_basis, rows.genes, fold.train, rows.genes_source)
        fold_genes[f"{fold.seed}/{fold.fold}"] = genes
        y = rows.targets(genes)
        pred = model.fit_predict(fold, y, genes)
        fold_metrics, fold_pred = rows.score(fold, genes, y, pred)
        metrics += fold_metrics
        predictions.append(fold_pred)
    metrics += rows.finish()
    table = metrics_table(metrics, out.task, out.features, model.head)
    seconds = time.perf_counter() - started
    meta = {**rows.meta(), **model.meta(), "genes": fold_genes, "seconds": seconds}
    write_parquet(table, out.metrics, meta)
    write_parquet(pd.concat(predictions, ignore_index=True), out.predictions, {})
    log.info("%s/%s/%s: %d folds in %.1fs", out.task, out.features, model.head, len(folds), seconds)
    return table
