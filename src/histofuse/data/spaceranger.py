"""Space Ranger output folders (``outs/``) read directly as expression files.

A sheet's ``expression`` may name Space Ranger's ``outs/`` folder instead of an ``.h5ad``. It is
read as the AnnData an ``.h5ad`` would give:

- counts, barcodes and genes from ``filtered_feature_bc_matrix.h5`` (10x's HDF5 layout:
  ``/matrix/{barcodes,data,indices,indptr,shape,features/{id,name,feature_type}}``, a genes ×
  barcodes CSC matrix), else from the ``filtered_feature_bc_matrix/`` folder (``matrix.mtx.gz``,
  ``barcodes.tsv.gz``, ``features.tsv.gz``); only ``Gene Expression`` features are kept;
- genes named by their symbols, made unique the way scanpy and Seurat read 10x files (a repeated
  symbol gets ``-1``, ``-2``, … in file order: ``TBCE``, ``TBCE-1``); the Ensembl ids are kept in
  ``var["gene_ids"]``;
- spot centres from ``spatial/tissue_positions.csv`` (Space Ranger ≥ 2.0, with a header) or
  ``spatial/tissue_positions_list.csv`` (older, headerless; same columns), as full-resolution
  pixels x = ``pxl_col_in_fullres``, y = ``pxl_row_in_fullres`` in ``obsm["spatial"]``;
- only spots with ``in_tissue == 1`` (as HEST does).

The µm/px of the full-resolution image comes from the spot pitch (:func:`pitch_mpp`): Visium
spots are 100 µm apart centre to centre, and ``array_row`` / ``array_col`` name each spot's
neighbours. ``scalefactors_json.json``'s ``spot_diameter_fullres`` is never used for it: Space
Ranger pads that diameter, so 55 µm divided by it gives a wrong µm/px.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

MATRIX_H5 = "filtered_feature_bc_matrix.h5"
MATRIX_DIR = "filtered_feature_bc_matrix"
POSITIONS = ("spatial/tissue_positions.csv", "spatial/tissue_positions_list.csv")
POSITION_COLUMNS = (
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
)
#: Centre-to-centre distance of neighbouring Visium spots, µm.
SPOT_PITCH_UM = 100.0
#: The µm/px source recorded for a value from the spot pitch.
MPP_SOURCE = "spaceranger-spot-pitch"
#: Hex-grid neighbours on the Visium array: (Δarray_row, Δarray_col).
_NEIGHBOURS = ((0, 2), (1, 1), (1, -1))
_FIX = "point `expression` at Space Ranger's outs/ folder"


def is_outs(path: str | Path | None) -> bool:
    """Whether an expression path is a folder (a Space Ranger ``outs/``), not an ``.h5ad``."""
    return bool(path) and Path(path).is_dir()  # type: ignore[arg-type]


def check_outs(outs: str | Path) -> None:
    """Checks that a folder holds a filtered matrix and a tissue positions file.

    Raises:
        HistofuseError: Naming the folder and the missing file.
    """
    _matrix_source(Path(outs))
    _positions_file(Path(outs))


def _matrix_source(outs: Path) -> Path:
    for candidate in (outs / MATRIX_H5, outs / MATRIX_DIR):
        if candidate.exists():
            return candidate
    raise HistofuseError(
        f"Space Ranger folder {outs} has neither {MATRIX_H5} nor {MATRIX_DIR}/; {_FIX}"
    )


def _positions_file(outs: Path) -> Path:
    for name in POSITIONS:
        if (outs / name).is_file():
            return outs / name
    raise HistofuseError(f"Space Ranger folder {outs} has no {' or '.join(POSITIONS)}; {_FIX}")


def read_outs(outs: str | Path) -> Any:
    """Reads a Space Ranger ``outs/`` folder as an AnnData of its in-tissue spots.

    Returns:
        AnnData: ``X`` raw counts (CSR, spots × genes), ``obs_names`` barcodes, ``var_names``
        unique gene symbols (``var["gene_ids"]``: the ids), ``obs`` ``in_tissue``, ``array_row``,
        ``array_col``, ``obsm["spatial"]`` full-resolution pixel centres (x, y).

    Raises:
        HistofuseError: Naming the file, if a file is missing or malformed, a barcode of the
            matrix has no position, or no matrix spot is in tissue.
    """
    import anndata

    outs = Path(outs)
    x, barcodes, var = read_matrix(outs)
    positions = read_positions(outs)
    missing = barcodes.difference(positions.index)
    if len(missing):
        raise HistofuseError(
            f"Space Ranger folder {outs}: {len(missing)} barcodes of the matrix are not in "
            f"{_positions_file(outs).name}, e.g. {missing[0]!r}; the files come from different "
            "runs"
        )
    keep = positions.loc[barcodes, "in_tissue"].to_numpy() == 1
    if not keep.any():
        raise HistofuseError(f"Space Ranger folder {outs}: no spot of the matrix is in tissue")
    spots = positions.loc[barcodes[keep]]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*names are not unique")
        adata = anndata.AnnData(
            X=x[np.flatnonzero(keep)],
            obs=spots[["in_tissue", "array_row", "array_col"]].copy(),
            var=var,
        )
        adata.var_names_make_unique()
    xy = spots[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    adata.obsm["spatial"] = xy  # x = column, y = row of the full-resolution image
    return adata


def read_matrix(outs: str | Path) -> tuple[Any, pd.Index, pd.DataFrame]:
    """Reads the filtered feature-barcode matrix (the ``.h5``, else the mtx folder).

    Returns:
        Counts (CSR, barcodes × gene-expression features), the barcodes, and ``var`` indexed by
        gene symbol (repeats kept) with ``gene_ids`` and ``feature_types``.

    Raises:
        HistofuseError: If the matrix is missing or unreadable.
    """
    source = _matrix_source(Path(outs))
    try:
        x, barcodes, var = _read_h5(source) if source.is_file() else _read_mtx(source)
    except HistofuseError:
        raise
    except Exception as exc:
        raise HistofuseError(
            f"Space Ranger matrix {source} is not a readable 10x feature-barcode matrix: {exc}"
        ) from exc
    if x.shape != (len(barcodes), len(var)):
        raise HistofuseError(
            f"Space Ranger matrix {source}: shape {x.shape[::-1]} does not match its "
            f"{len(var)} features and {len(barcodes)} barcodes"
        )
    genes = (var["feature_types"] == "Gene Expression").to_numpy()
    var = var.loc[genes].set_index("gene_symbols", drop=False)
    var.index.name = None
    return x.tocsc()[:, np.flatnonzero(genes)].tocsr(), pd.Index(barcodes), var


def _read_h5(path: Path) -> tuple[Any, list[str], pd.DataFrame]:
    """Reads 10x's HDF5 matrix: ``/matrix`` holds a genes × barcodes CSC matrix."""
    import h5py
    from scipy import sparse

    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise HistofuseError(
                f"Space Ranger matrix {path} has no /matrix group (not a Space Ranger or Cell "
                "Ranger ≥ 3 feature-barcode matrix)"
            )
        m = f["matrix"]
        n_features, n_barcodes = (int(v) for v in m["shape"][:2])
        x = sparse.csc_matrix(
            (m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_features, n_barcodes)
        )
        feats = m["features"]
        types = feats["feature_type"][:] if "feature_type" in feats else None
        var = pd.DataFrame(
            {
                "gene_ids": feats["id"][:].astype(str),
                "gene_symbols": feats["name"][:].astype(str),
                "feature_types": "Gene Expression" if types is None else types.astype(str),
            }
        )
        barcodes = m["barcodes"][:].astype(str).tolist()
    return x.T.tocsr(), barcodes, var


def _read_mtx(folder: Path) -> tuple[Any, list[str], pd.DataFrame]:
    """Reads 10x's Matrix Market folder (genes × barcodes ``matrix.mtx.gz`` and its two lists)."""
    import scipy.io
    from scipy import sparse

    files = {n: folder / f"{n}.gz" for n in ("matrix.mtx", "barcodes.tsv", "features.tsv")}
    for file in files.values():
        if not file.is_file():
            raise HistofuseError(f"Space Ranger matrix folder {folder} has no {file.name}")
    x = sparse.csr_matrix(scipy.io.mmread(files["matrix.mtx"]).T)
    barcodes = pd.read_csv(files["barcodes.tsv"], sep="\t", header=None, dtype=str)[0].tolist()
    feats = pd.read_csv(files["features.tsv"], sep="\t", header=None, dtype=str)
    var = pd.DataFrame(
        {
            "gene_ids": feats[0].to_numpy(),
            "gene_symbols": feats[1].to_numpy() if feats.shape[1] > 1 else feats[0].to_numpy(),
            "feature_types": feats[2].to_numpy() if feats.shape[1] > 2 else "Gene Expression",
        }
    )
    return x, barcodes, var


def read_positions(outs: str | Path) -> pd.DataFrame:
    """Reads the tissue positions (with or without the header), indexed by barcode.

    Raises:
        HistofuseError: If the file lacks a column, holds a non-numeric value, or repeats a
            barcode.
    """
    path = _positions_file(Path(outs))
    with open(path) as f:
        has_header = f.readline().startswith("barcode")
    table = pd.read_csv(path, header=0 if has_header else None, dtype=str)
    if not has_header:
        table.columns = list(POSITION_COLUMNS)[: table.shape[1]] + list(table.columns[6:])
    absent = [c for c in POSITION_COLUMNS if c not in table.columns]
    if absent:
        raise HistofuseError(
            f"tissue positions {path} lacks column(s) {', '.join(absent)}; expected "
            f"{','.join(POSITION_COLUMNS)} as Space Ranger writes them"
        )
    table = table.set_index("barcode")
    numbers = table[list(POSITION_COLUMNS[1:])].apply(pd.to_numeric, errors="coerce")
    if not np.isfinite(numbers.to_numpy(np.float64)).all():
        row = int(np.flatnonzero(~np.isfinite(numbers.to_numpy(np.float64)).all(axis=1))[0])
        raise HistofuseError(
            f"tissue positions {path}: spot {numbers.index[row]!r} has a non-numeric or missing "
            "value; the file is damaged"
        )
    if numbers.index.duplicated().any():
        dup = numbers.index[numbers.index.duplicated()][0]
        raise HistofuseError(f"tissue positions {path} lists barcode {dup!r} twice")
    return numbers


def spot_pitch_px(positions: pd.DataFrame) -> float:
    """The median distance between hex-grid neighbours, in full-resolution pixels.

    Neighbours are found by array position: same ``array_row`` and ``array_col`` two apart, or
    adjacent rows and ``array_col`` one apart (all 100 µm apart on a Visium slide). Every listed
    spot counts, in tissue or not.

    Raises:
        HistofuseError: If no two listed spots are neighbours.
    """
    grid = positions.reset_index(drop=True)
    dists = []
    for d_row, d_col in _NEIGHBOURS:
        shifted = grid.assign(
            array_row=grid["array_row"] - d_row, array_col=grid["array_col"] - d_col
        )
        pairs = grid.merge(shifted, on=["array_row", "array_col"], suffixes=("", "_n"))
        dy = pairs["pxl_row_in_fullres"] - pairs["pxl_row_in_fullres_n"]
        dx = pairs["pxl_col_in_fullres"] - pairs["pxl_col_in_fullres_n"]
        dists.append(np.hypot(dx.to_numpy(), dy.to_numpy()))
    found = np.concatenate(dists)
    if not found.size:
        raise HistofuseError("no two spots are neighbours on the Visium array")
    return float(np.median(found))


def pitch_mpp(outs: str | Path) -> float:
    """The full-resolution image's µm/px from the spot pitch: 100 µm ÷ pitch in pixels.

    Raises:
        HistofuseError: Naming the positions file, if the pitch cannot be measured or is not
            positive.
    """
    path = _positions_file(Path(outs))
    try:
        pitch = spot_pitch_px(read_positions(outs))
    except HistofuseError as exc:
        if str(exc).startswith("tissue positions"):
            raise
        raise HistofuseError(
            f"tissue positions {path}: {exc}, so the µm/px cannot be measured from the spot "
            "pitch; set the sample's `mpp` column in the sample sheet"
        ) from None
    if not pitch > 0:
        raise HistofuseError(
            f"tissue positions {path}: neighbouring spots share a pixel position; the file is "
            "damaged"
        )
    return SPOT_PITCH_UM / pitch
