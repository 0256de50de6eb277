"""Scoring a fold's predictions and the layout of metrics and predictions tables.

Every stage writes the same metrics table (:data:`METRICS_COLUMNS`, one row per seed, fold,
protocol, sample and gene), so the report reads spot, PEKA and bulk rows alike. Protocols:

* ``hest-pooled``: per gene over all test spots of a fold (HEST-Benchmark; ``sample`` is empty);
* ``per-sample``: per gene within each test sample of a fold;
* ``case``: per gene across the test cases of a fold, each case's slides averaged first;
* ``case-pooled``: per gene once per repeat, over the out-of-fold predictions of all cases.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from histofuse.evaluation.metrics import per_gene_metrics

METRICS_COLUMNS = [
    "task", "features", "head", "protocol", "fold", "seed", "sample", "gene",
    "pearson", "spearman", "mse", "constant", "n",
]  # fmt: skip
"""Columns of a metrics file, one row per (seed, fold, protocol, sample, gene)."""

SPOT_PROTOCOLS = ("hest-pooled", "per-sample")
"""Protocols of spot-level tasks."""


def label(m: pd.DataFrame, protocol: str, fold: int, seed: int, sample: str = "") -> pd.DataFrame:
    """Adds the ``seed, fold, protocol, sample`` columns to per-gene metrics (in place)."""
    m.insert(0, "sample", sample)
    m.insert(0, "protocol", protocol)
    m.insert(0, "fold", fold)
    m.insert(0, "seed", seed)
    return m


def prediction_frame(
    keys: pd.DataFrame, pred: np.ndarray, truth: np.ndarray, genes: list[str]
) -> pd.DataFrame:
    """A predictions table: ``keys`` columns, then ``pred:<gene>`` and ``true:<gene>``."""
    return pd.concat(
        [
            keys.reset_index(drop=True),
            pd.DataFrame(pred, columns=[f"pred:{g}" for g in genes]),
            pd.DataFrame(truth, columns=[f"true:{g}" for g in genes]),
        ],
        axis=1,
    )


def spot_units(test_samples: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Evaluation units of a fold: all test spots pooled (HEST), then each test sample alone."""
    units = [("hest-pooled", np.arange(len(test_samples)))]
    for sample in pd.unique(test_samples):
        units.append(("per-sample", np.flatnonzero(test_samples == sample)))
    return units


def score_spots(
    y_test: np.ndarray,
    pred: np.ndarray,
    genes: list[str],
    test_index: pd.DataFrame,
    seed: int,
    fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores one fold's test spots under both spot protocols.

    Args:
        y_test: Targets of the test spots (N, genes).
        pred: Predictions (N, genes).
        genes: Gene names of the columns.
        test_index: ``sample`` and ``barcode`` of the test spots.
        seed: Split seed.
        fold: Fold number.

    Returns:
        Per-gene metrics (``hest-pooled`` over all test spots, ``per-sample`` per test sample)
        and the predictions table (``seed, fold, sample, barcode, pred:*, true:*``).
    """
    sample_ids = test_index["sample"].to_numpy()
    metrics = []
    for protocol, unit in spot_units(sample_ids):
        m = per_gene_metrics(y_test[unit], pred[unit], genes)
        sample = "" if protocol == "hest-pooled" else sample_ids[unit][0]
        metrics.append(label(m, protocol, fold, seed, sample))
    keys = test_index[["sample", "barcode"]].reset_index(drop=True)
    keys.insert(0, "fold", fold)
    keys.insert(0, "seed", seed)
    return pd.concat(metrics, ignore_index=True), prediction_frame(keys, pred, y_test, genes)


def metrics_table(
    metrics: list[pd.DataFrame], task_name: str, features_name: str, head: str
) -> pd.DataFrame:
    """Joins the folds' metrics and names the task, feature set and head of every row."""
    out = pd.concat(metrics, ignore_index=True)
    for col, val in (("task", task_name), ("features", features_name), ("head", head)):
        out.insert(0, col, val)
    out = out[METRICS_COLUMNS]
    out.attrs = {}
    return out
