"""The fit stage: one head on one feature set for one task, over all folds of the task's splits.

Features come from the cache only (never from slides). Targets are joined to features by
(sample, barcode). Outputs: per-gene metrics per fold, and the test predictions. The fit is
spot rows (:mod:`histofuse.evaluation.spots`) and cached features (:class:`CachedHead`) run by
:func:`histofuse.evaluation.runner.run_task`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.evaluation.runner import Fold
from histofuse.settings import Task


@dataclass
class CachedHead:
    """A head fitted on a feature set's cached features (the fit stage's model).

    Attributes:
        x: Features of the task's spots, in memory or left in the cache (``LazyFeatures``).
        head: Head id (:func:`histofuse.heads.probes.make_head`).
        params: Its hyperparameters.
        encoders: Encoders of the feature set, in concatenation order.
        widths: Feature width of each encoder (the blocks of a fusion head).
        batch_rows: Rows per streamed batch when ``x`` stays in the cache.
    """

    x: Any
    head: str
    params: dict[str, Any]
    encoders: list[str]
    widths: list[int]
    batch_rows: int | None = None

    def fit_predict(self, fold: Fold, y: np.ndarray, genes: list[str]) -> np.ndarray:
        """Fits a fresh head (seeded by the fold's seed) and predicts the test spots."""
        from histofuse.heads.probes import make_head
        from histofuse.heads.streaming import fit_predict

        est = make_head(self.head, self.params, seed=fold.seed)
        if "blocks" in est.get_params():
            est.set_params(blocks=self.widths)
        return fit_predict(est, self.x, y, fold.train, fold.test, self.batch_rows)

    def meta(self) -> dict[str, Any]:
        """Encoders, blocks, hyperparameters and whether features were streamed."""
        return {
            "encoders": self.encoders,
            "blocks": self.widths,
            "head_params": self.params,
            "streamed": not isinstance(self.x, np.ndarray),
        }


def fit_task(
    task_name: str,
    task: Task,
    samples_sheet: str | Path,
    stores: Sequence[str | Path],
    features_name: str,
    head: str,
    head_params: dict[str, Any] | None,
    metrics_out: str | Path,
    predictions_out: str | Path,
    memory_budget_mb: float | None = None,
) -> pd.DataFrame:
    """Runs one head over all folds of a spot-level task and writes metrics and predictions.

    Metrics are written for two protocols: ``hest-pooled`` (per gene over all test spots of the
    fold; ``sample`` is empty) and ``per-sample`` (per gene within each test sample).

    When the task's features (float32) exceed ``memory_budget_mb`` MiB, they stay in the cache
    and the head streams them in batches (:mod:`histofuse.heads.streaming`).

    Args:
        task_name: The task's name (the ``task`` column).
        task: The task's settings.
        samples_sheet: The sample sheet (unused for a HEST-Bench task).
        stores: Feature stores of the feature set.
        features_name: The feature set's name (the ``features`` column).
        head: Head id.
        head_params: Its hyperparameters.
        metrics_out: Metrics parquet.
        predictions_out: Predictions parquet.
        memory_budget_mb: MiB of float32 features held in memory at most.

    Returns:
        The per-(seed, fold, protocol, sample, gene) metrics table that was written.
    """
    from histofuse.evaluation.features import load_feature_set
    from histofuse.evaluation.runner import Outputs, run_task
    from histofuse.evaluation.spots import SpotFeatures, spot_rows, task_samples
    from histofuse.heads.streaming import batch_rows_for, limit_malloc_arenas

    t0 = time.perf_counter()
    samples = task_samples(task_name, task, samples_sheet)
    if memory_budget_mb is not None:
        limit_malloc_arenas()
    x, index, encoders, widths = load_feature_set(
        stores, samples.names, with_blocks=True, memory_budget_mb=memory_budget_mb
    )
    batch_rows = batch_rows_for(memory_budget_mb, sum(widths)) if memory_budget_mb else None
    rows, features = spot_rows(samples, stores, SpotFeatures(index, {"x": x}, batch_rows))
    model = CachedHead(features.arrays["x"], head, head_params or {}, encoders, widths, batch_rows)
    out = Outputs(task_name, features_name, metrics_out, predictions_out)
    return run_task(rows, model, out, t0)
