"""Bulk expression tables and slide-embedding files: reading and transforms.

A table has one row per id (a slide's ``sample_id`` or a case's ``patient_id``) and one column
per gene (or embedding dimension). Accepted formats: CSV/TSV (the id in ``id_column`` or the
first column), parquet (the same, or a named index) and ``.h5ad`` (ids from ``obs_names``,
columns from ``var_names``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

BULK_TRANSFORMS = ("log2p1", "log1p", "log1p_cpm", "log2_cp10k", "none")


def read_table(path: str | Path, id_column: str | None = None, what: str = "table") -> pd.DataFrame:
    """Reads an id × columns numeric table.

    Args:
        path: ``.csv``, ``.tsv``, ``.parquet`` or ``.h5ad``.
        id_column: Column holding the ids (default: the first column; for parquet a named
            index is used when present).
        what: What the table is, for error messages.

    Returns:
        A float64 frame indexed by id (str).

    Raises:
        HistofuseError: If the file is missing, unreadable, has duplicate ids or non-numeric
            values.
    """
    path = Path(path)
    if not path.is_file():
        raise HistofuseError(f"{what} {path} does not exist; check the path in the config")
    try:
        df = _read_frame(path, id_column, what)
    except HistofuseError:
        raise
    except KeyError as exc:
        raise HistofuseError(f"{what} {path} has no id column {exc}; set `id_column`") from None
    except Exception as exc:
        raise HistofuseError(f"{what} {path} is not readable: {exc}") from exc
    df.index = df.index.astype(str)
    df.columns = df.columns.astype(str)
    if df.index.duplicated().any():
        dup = df.index[df.index.duplicated()][0]
        raise HistofuseError(f"{what} {path} lists id {dup!r} twice; keep one row per id")
    try:
        df = df.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise HistofuseError(
            f"{what} {path} has non-numeric values ({exc}); the ids go in the first column "
            "(or `id_column`) and every other column must be numeric"
        ) from None
    if not np.isfinite(df.to_numpy()).all():
        raise HistofuseError(f"{what} {path} has missing or infinite values; fill or drop them")
    return df


def _read_frame(path: Path, id_column: str | None, what: str) -> pd.DataFrame:
    """A table file as a frame indexed by id, by its suffix (see :func:`read_table`)."""
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".h5ad":
        import anndata

        adata = anndata.read_h5ad(path)
        x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        return pd.DataFrame(x, index=adata.obs_names, columns=adata.var_names)
    if suffix == ".parquet":
        df = pd.read_parquet(path)
        if id_column is None and df.index.name is None:
            id_column = str(df.columns[0])
        return df if id_column is None else df.set_index(id_column)
    if suffix in (".csv", ".tsv", ".txt"):
        df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        return df.set_index(id_column or str(df.columns[0]))
    raise HistofuseError(
        f"{what} {path}: unknown format {suffix!r}; use .csv, .tsv, .parquet or .h5ad"
    )


def transform_bulk(values: np.ndarray, how: str) -> np.ndarray:
    """Applies a target transform to bulk values (rows × genes, over all genes of the table).

    Args:
        values: Non-negative expression values (e.g. FPKM-UQ or counts).
        how: ``log2p1`` (``log2(x + 1)``, as released on TCGA FPKM-UQ), ``log1p``,
            ``log1p_cpm`` (per million of the row total, then ``log1p``), ``log2_cp10k``
            (``log2(1 + per 10k)``) or ``none``.

    Raises:
        HistofuseError: For an unknown transform or negative values under a log transform.
    """
    values = np.asarray(values, dtype=np.float64)
    if how not in BULK_TRANSFORMS:
        raise HistofuseError(
            f"unknown bulk transform {how!r}; choose one of {', '.join(BULK_TRANSFORMS)}"
        )
    if how == "none":
        return values
    if (values < 0).any():
        raise HistofuseError(
            f"bulk transform {how!r} needs non-negative values; the table has negatives (is it "
            "already log-transformed? then use `transform: none`)"
        )
    if how == "log2p1":
        return np.log2(values + 1.0)
    if how == "log1p":
        return np.log1p(values)
    totals = values.sum(axis=1, keepdims=True)
    scaled = np.where(totals > 0, values / np.maximum(totals, 1e-12), 0.0)
    if how == "log1p_cpm":
        return np.log1p(scaled * 1e6)
    return np.log2(1.0 + scaled * 1e4)


def read_slide_embeddings(
    paths: Sequence[str | Path], slides: list[str]
) -> tuple[np.ndarray, list[int]]:
    """Slide embeddings of the given slides from one or more files, concatenated in file order.

    Returns:
        The embeddings (slides × sum of dims) as float32 and the width of each file's part.

    Raises:
        HistofuseError: If a file has no row for a slide.
    """
    parts = []
    for path in paths:
        emb = read_table(path, what="slide embedding file")
        absent = [s for s in slides if s not in emb.index]
        if absent:
            raise HistofuseError(
                f"slide embedding file {path} has no row for slides {absent[:3]}; its first "
                "column must hold the sample_id of every slide of the task"
            )
        parts.append(emb.loc[slides].to_numpy(np.float32))
    return np.concatenate(parts, axis=1), [p.shape[1] for p in parts]
