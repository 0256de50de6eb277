"""The summary table: one row per (task, features, head).

Aggregation follows HEST-Benchmark: a fold's value is the mean Pearson over its genes (constant
genes excluded and counted), a row's ``pearson_mean`` is the mean over folds (and seeds) and
``pearson_std`` their standard deviation with ddof = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

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
]


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Aggregates per-(fold, gene) metrics into the summary table (sorted, best first per task)."""
    keys = ["task", "features", "head", "protocol"]
    valid = metrics[~metrics["constant"]]
    per_fold = valid.groupby([*keys, "seed", "fold"], as_index=False).agg(
        pearson=("pearson", "mean"), spearman=("spearman", "mean"), mse=("mse", "mean")
    )
    rows = per_fold.groupby(keys, as_index=False).agg(
        pearson_mean=("pearson", "mean"),
        pearson_std=("pearson", lambda s: float(np.std(s, ddof=0))),
        n_folds=("fold", "size"),
        spearman_mean=("spearman", "mean"),
        mse_mean=("mse", "mean"),
    )
    genes = (
        metrics.groupby(keys)
        .agg(
            n_genes=("gene", "nunique"),
            n_constant=("constant", "sum"),
        )
        .reset_index()
    )
    out = rows.merge(genes, on=keys, how="right")
    out["n_encoders"] = out["features"].str.count(r"\+") + 1
    out = out.sort_values(["task", "pearson_mean"], ascending=[True, False], na_position="last")
    return out[SUMMARY_COLUMNS].reset_index(drop=True)


def to_markdown(summary: pd.DataFrame) -> str:
    """Renders the summary as a GitHub-flavoured Markdown table (no extra dependency)."""
    cols = ["task", "features", "head", "protocol", "pearson", "n_folds", "n_genes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in summary.itertuples():
        lines.append(
            f"| {r.task} | {r.features} | {r.head} | {r.protocol} | "
            f"{r.pearson_mean:.4f} ± {r.pearson_std:.4f} | {r.n_folds} | {r.n_genes} |"
        )
    return (
        "# histofuse summary\n\nPearson: mean ± std over folds of the per-fold mean over genes.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def write_report(metrics_files: Sequence[str | Path], out_dir: str | Path) -> pd.DataFrame:
    """Reads metrics files and writes ``summary.csv`` and ``summary.md`` into ``out_dir``.

    Raises:
        HistofuseError: If no metrics file is given.
    """
    if not metrics_files:
        raise HistofuseError("no metrics files to report; run the fit step first")
    metrics = pd.concat([pd.read_parquet(p) for p in metrics_files], ignore_index=True)
    summary = summarise(metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6f")
    (out / "summary.md").write_text(to_markdown(summary))
    return summary
