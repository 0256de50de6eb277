"""Per-gene metrics: Pearson (as HEST: over pooled test spots), Spearman and MSE.

A gene whose truth or prediction is constant over the test spots has no correlation; it is
flagged (``constant``) and excluded from means, which report how many genes they cover. A gene
with a NaN or inf value (e.g. a diverged head's prediction) is flagged the same way, so it never
turns a mean into NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats


def per_gene_metrics(y_true: np.ndarray, y_pred: np.ndarray, genes: list[str]) -> pd.DataFrame:
    """Computes per-gene Pearson, Spearman and MSE over the rows of (n, g) arrays.

    Returns:
        One row per gene with columns ``gene, pearson, spearman, mse, constant, n``.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    n = len(y_true)
    finite = np.isfinite(y_true).all(axis=0) & np.isfinite(y_pred).all(axis=0)
    constant = (np.ptp(y_true, axis=0) == 0) | (np.ptp(y_pred, axis=0) == 0) | (n < 2) | ~finite
    pearson = np.full(len(genes), np.nan)
    spearman = np.full(len(genes), np.nan)
    ok = ~constant
    if ok.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            pearson[ok] = stats.pearsonr(y_true[:, ok], y_pred[:, ok], axis=0).statistic
            ranks_t = stats.rankdata(y_true[:, ok], axis=0)
            ranks_p = stats.rankdata(y_pred[:, ok], axis=0)
            spearman[ok] = stats.pearsonr(ranks_t, ranks_p, axis=0).statistic
    return pd.DataFrame(
        {
            "gene": genes,
            "pearson": pearson,
            "spearman": spearman,
            "mse": ((y_true - y_pred) ** 2).mean(axis=0) if n else np.nan,
            "constant": constant,
            "n": n,
        }
    )
