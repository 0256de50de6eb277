"""Spot expression from AnnData files: counts for given barcodes, gene selection, transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

TRANSFORMS = ("log1p", "log1p_cpm", "log2_cp10k", "none")


def read_counts(expression: str | Path, barcodes: np.ndarray | None = None) -> pd.DataFrame:
    """Reads raw counts (spots × genes) from an ``.h5ad``, optionally for given barcodes in order.

    Raises:
        HistofuseError: If the file is unreadable or a requested barcode is missing.
    """
    import anndata

    path = Path(expression)
    try:
        adata = anndata.read_h5ad(path)
    except Exception as exc:
        raise HistofuseError(f"expression file {path} is not a readable .h5ad: {exc}") from exc
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    df = pd.DataFrame(
        x.astype(np.float64), index=adata.obs_names.astype(str), columns=adata.var_names.astype(str)
    )
    if df.columns.duplicated().any():
        raise HistofuseError(f"expression file {path} has duplicate gene names")
    if barcodes is not None:
        missing = pd.Index(barcodes).difference(df.index)
        if len(missing):
            raise HistofuseError(
                f"expression file {path} lacks {len(missing)} barcodes of the tiles, e.g. "
                f"{missing[0]!r}; re-run the tile step on this file"
            )
        df = df.loc[barcodes]
    return df


def transform_counts(counts: np.ndarray, how: str, totals: np.ndarray | None = None) -> np.ndarray:
    """Applies a target transform to raw counts (spots × genes).

    Args:
        counts: Raw counts of the selected genes.
        how: ``log1p`` (HEST: log1p of raw counts), ``log1p_cpm`` (counts per million over all
            genes, then log1p; Meta-Encoder), ``log2_cp10k`` (log2(1 + counts per 10k); PEKA) or
            ``none``.
        totals: Per-spot total counts over all genes (needed by the normalised transforms).
    """
    if how == "log1p":
        return np.log1p(counts)
    if how == "none":
        return counts.astype(np.float64)
    if totals is None:
        raise ValueError(f"transform {how!r} needs per-spot totals")
    scale = np.where(totals > 0, 1.0 / np.maximum(totals, 1e-12), 0.0)[:, None]
    if how == "log1p_cpm":
        return np.log1p(counts * scale * 1e6)
    if how == "log2_cp10k":
        return np.log2(1.0 + counts * scale * 1e4)
    raise HistofuseError(f"unknown target transform {how!r}; choose one of {', '.join(TRANSFORMS)}")


def top_variable_genes(values: pd.DataFrame, k: int) -> list[str]:
    """Returns the ``k`` genes with the highest variance (ties broken by name), in that order."""
    var = values.var(axis=0, ddof=1)
    order = sorted(var.index, key=lambda g: (-var[g], g))
    return order[: min(k, len(order))]
