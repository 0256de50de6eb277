"""The summary table: one row per (task, features, head).

Aggregation follows HEST-Benchmark: a fold's value is the mean Pearson over its genes (constant
genes excluded and counted), a row's ``pearson_mean`` is the mean over folds (and seeds) and
``pearson_std`` their standard deviation with ddof = 0. Under the ``per-sample`` protocol
(Meta-Encoder) a unit is one test sample of a fold, so ``n_folds`` counts (fold, sample) records.

For a feature set of several encoders, ``single_mean`` is the mean ``pearson_mean`` of its single
encoders under the same task and protocol, with the same head when the single encoders have it,
else the ``linear`` head (Meta-Encoder's single-encoder probe), else ``hest``;
``gain_vs_singles`` = (``pearson_mean`` − ``single_mean``) / |``single_mean``| (the absolute value
keeps the sign of the change when the singles' mean is negative).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from histofuse.plan import names
from histofuse.report.tables import encoder_count

SUMMARY_COLUMNS = [
    "task",
    "features",
    "head",
    "protocol",
    "pearson_mean",
    "pearson_std",
    "n_folds",
    "n_genes",
    "n_constant",
    "spearman_mean",
    "mse_mean",
    "n_encoders",
    "single_mean",
    "gain_vs_singles",
]


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Aggregates per-(fold, gene) metrics into the summary table (sorted, best first per task)."""
    keys = ["task", "features", "head", "protocol"]
    if "sample" not in metrics:
        metrics = metrics.assign(sample="")
    valid = metrics[~metrics["constant"]]
    per_fold = valid.groupby([*keys, "seed", "fold", "sample"], as_index=False).agg(
        pearson=("pearson", "mean"), spearman=("spearman", "mean"), mse=("mse", "mean")
    )
    rows = per_fold.groupby(keys, as_index=False).agg(
        pearson_mean=("pearson", "mean"),
        pearson_std=("pearson", lambda s: float(np.std(s, ddof=0))),
        n_folds=("fold", "size"),
        spearman_mean=("spearman", "mean"),
        mse_mean=("mse", "mean"),
    )
    unit_genes = metrics.groupby([*keys, "seed", "fold", "sample"], as_index=False).agg(
        n_genes=("gene", "nunique"), n_constant=("constant", "sum")
    )
    genes = unit_genes.groupby(keys, as_index=False).agg(
        n_genes=("n_genes", "max"), n_constant=("n_constant", "sum")
    )
    out = rows.merge(genes, on=keys, how="right")
    out["n_encoders"] = out["features"].map(encoder_count).astype("int64")
    out[["single_mean", "gain_vs_singles"]] = [_single_baseline(out, r) for r in out.itertuples()]
    out = out.sort_values(["task", "pearson_mean"], ascending=[True, False], na_position="last")
    return out[SUMMARY_COLUMNS].reset_index(drop=True)


def _single_baseline(rows: pd.DataFrame, row: object) -> tuple[float, float]:
    """(mean of the single encoders' Pearson, relative gain) for a multi-encoder row."""
    if row.n_encoders < 2:  # type: ignore[attr-defined]
        return float("nan"), float("nan")
    encoders = names.parse(row.features).encoders  # type: ignore[attr-defined]
    same = rows[
        (rows["task"] == row.task)  # type: ignore[attr-defined]
        & (rows["protocol"] == row.protocol)  # type: ignore[attr-defined]
        & rows["features"].isin(encoders)
    ]
    for head in (row.head, "linear", "hest"):  # type: ignore[attr-defined]
        found = same[same["head"] == head]
        if len(found) == len(encoders):
            base = float(found["pearson_mean"].mean())
            return base, (row.pearson_mean - base) / abs(base)  # type: ignore[attr-defined]
    return float("nan"), float("nan")
