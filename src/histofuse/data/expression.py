"""Spot expression from .h5ad files or Space Ranger folders: counts, gene selection, transforms."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

TRANSFORMS = ("log1p", "log1p_cpm", "log2_cp10k", "none")
GENES_FIX = "keep one column per gene (sum the duplicates, or name genes by their ids)"
BARCODES_FIX = "each spot needs its own barcode (obs_names); drop or rename the repeats"
#: Transforms that take raw counts: non-negative whole numbers.
COUNT_TRANSFORMS = ("log1p", "log1p_cpm", "log2_cp10k")


def read_expression(path: str | Path, backed: str | None = None) -> Any:
    """Opens an expression file: an ``.h5ad``, or a Space Ranger ``outs/`` folder.

    An ``.h5ad`` is opened quietly about repeated names (:func:`check_unique` refuses them); a
    folder is read by :func:`histofuse.data.spaceranger.read_outs` (in memory; ``backed`` does
    not apply).

    Raises:
        HistofuseError: If the file is not a readable ``.h5ad`` or the folder not a readable
            Space Ranger output.
    """
    import anndata

    from histofuse.data.spaceranger import is_outs, read_outs

    if is_outs(path):
        return read_outs(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*names are not unique")
            return anndata.read_h5ad(path, backed=backed)
    except Exception as exc:
        raise HistofuseError(f"expression file {path} is not a readable .h5ad: {exc}") from exc


def check_unique(names: pd.Index, path: str | Path, what: str, fix: str) -> None:
    """Refuses repeated names (barcodes or genes) of an expression file, naming a few.

    Raises:
        HistofuseError: Naming the file, how many names repeat, a few of them and ``fix``.
    """
    dup = pd.Index(names)[pd.Index(names).duplicated()].unique()
    if len(dup):
        shown = ", ".join(repr(str(d)) for d in dup[:3])
        raise HistofuseError(
            f"expression file {path} has {len(dup)} duplicate {what}, e.g. {shown}; {fix}"
        )


def check_counts(
    values: np.ndarray, path: str | Path, transform: str, integer_counts: bool = True
) -> None:
    """Refuses values that are not raw counts under a counts transform (see ``COUNT_TRANSFORMS``).

    Negative values are never counts; values that are not whole numbers are already normalised
    (``integer_counts=False`` accepts them, e.g. ambient-corrected counts). NaN and inf are left
    to the spot filter (a bad spot, not a bad file).

    Args:
        values: The file's expression values (any shape; for sparse data its stored values).
        path: The file (named in the message).
        transform: The task's target transform; ``none`` takes any values.
        integer_counts: Whether values must be whole numbers.

    Raises:
        HistofuseError: Naming the file, what was found and the fix.
    """
    if transform not in COUNT_TRANSFORMS:
        return
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if not x.size:
        return
    keep = "set the task's `transform: none` if these values are what should be predicted"
    if x.min() < 0:
        raise HistofuseError(
            f"expression file {path}: {int((x < 0).sum())} negative values (min {x.min():.3g}), "
            f"not raw counts: they look scaled or centred; transform {transform} needs raw "
            f"counts: give raw counts, or {keep}"
        )
    fractional = np.abs(x - np.rint(x)) > 1e-6
    if integer_counts and fractional.any():
        share = 100 * fractional.sum() / max(1, int((x != 0).sum()))
        kind = "log-normalised" if x.max() < 30 else "normalised (scaled counts)"
        raise HistofuseError(
            f"expression file {path}: max {x.max():.3g}, {share:.0f} % of non-zero values are "
            f"not integers: looks {kind}; transform {transform} needs raw counts: give raw "
            f"counts, {keep}, or set its `integer_counts: false` to accept non-integer counts"
        )


def read_counts(
    expression: str | Path,
    barcodes: np.ndarray | None = None,
    transform: str = "none",
    integer_counts: bool = True,
) -> pd.DataFrame:
    """Reads raw counts (spots × genes), optionally for given barcodes in order.

    Args:
        expression: The ``.h5ad`` file, or a Space Ranger ``outs/`` folder.
        barcodes: The spots to return, in order (``None``: every spot of the file).
        transform: The task's target transform: a counts transform refuses values that are not
            raw counts (see :func:`check_counts`).
        integer_counts: Whether counts must be whole numbers under a counts transform.

    Raises:
        HistofuseError: If the file is unreadable, has duplicate genes or barcodes, holds values
            that are not counts under a counts transform, or lacks a requested barcode.
    """
    from scipy import sparse

    path = Path(expression)
    adata = read_expression(path)
    check_unique(adata.var_names, path, "gene names", GENES_FIX)
    check_unique(adata.obs_names, path, "barcodes", BARCODES_FIX)
    stored = adata.X.data if sparse.issparse(adata.X) else adata.X  # sparse: its non-zeros
    check_counts(stored, path, transform, integer_counts)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    df = pd.DataFrame(
        x.astype(np.float64), index=adata.obs_names.astype(str), columns=adata.var_names.astype(str)
    )
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
