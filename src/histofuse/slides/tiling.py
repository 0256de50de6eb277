"""Tiling: coordinates of spot-centred patches at a true target µm/px.

Tiling writes coordinates, never pixels: every encoder later reads the same patches through
:class:`histofuse.slides.reader.TileDataset`. A tiles table has one row per patch with its centre
and top-left corner in level-0 pixels, the patch side in level-0 pixels, centre in µm, and the
spot barcode. The table's parquet metadata holds the slide path, µm/px and its source, and the
tiling spec, so that a tiles file is self-describing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError
from histofuse.slides.spec import TilingSpec
from histofuse.slides.wsi import open_slide, slide_mpp

TILES_META_KEY = b"histofuse"


def read_spots(expression: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads spot barcodes and level-0 pixel centres (x, y) from an AnnData ``.h5ad`` file.

    Raises:
        HistofuseError: If the file is missing, unreadable or has no ``obsm["spatial"]``.
    """
    import anndata

    path = Path(expression)
    if not path.is_file():
        raise HistofuseError(f"expression file {path} does not exist; check the sample sheet")
    try:
        adata = anndata.read_h5ad(path, backed="r")
    except Exception as exc:
        raise HistofuseError(f"expression file {path} is not a readable .h5ad: {exc}") from exc
    try:
        if "spatial" not in adata.obsm:
            raise HistofuseError(
                f"expression file {path} has no obsm['spatial'] spot coordinates (level-0 px, x, y)"
            )
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
        barcodes = np.asarray(adata.obs_names, dtype=str)
    finally:
        adata.file.close()
    if not np.isfinite(xy).all():
        raise HistofuseError(f"expression file {path} has non-finite spot coordinates")
    return barcodes, xy


def tile_spots(
    slide_path: str | Path,
    expression: str | Path,
    spec: TilingSpec,
    mpp_override: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Computes one patch of ``spec.patch_um`` centred on each spot.

    Args:
        slide_path: The whole-slide image.
        expression: The ``.h5ad`` with spot centres in level-0 px in ``obsm["spatial"]``.
        spec: The tiling spec.
        mpp_override: The sheet's µm/px for this slide, if set.

    Returns:
        The tiles table and its metadata (slide path, µm/px and source, spec, slide size).

    Raises:
        HistofuseError: If a spot lies outside the slide, or the slide has no µm/px.
    """
    with open_slide(slide_path) as slide:
        mpp = slide_mpp(slide, slide_path, mpp_override)
        width, height = slide.dimensions
    barcodes, xy = read_spots(expression)
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= width) | (xy[:, 1] >= height)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise HistofuseError(
            f"expression file {expression}: {int(outside.sum())} spot centres lie outside slide "
            f"{slide_path} ({width}×{height} px), e.g. {barcodes[i]} at {xy[i].tolist()}; "
            "obsm['spatial'] must hold level-0 pixel (x, y) coordinates of this slide"
        )
    size0 = spec.patch_um / mpp.x
    table = pd.DataFrame(
        {
            "barcode": barcodes,
            "x": xy[:, 0],
            "y": xy[:, 1],
            "x0": np.floor(xy[:, 0] - size0 / 2).astype(np.int64),
            "y0": np.floor(xy[:, 1] - size0 / 2).astype(np.int64),
            "size0": np.full(len(xy), round(size0), dtype=np.int64),
            "x_um": xy[:, 0] * mpp.x,
            "y_um": xy[:, 1] * mpp.y,
        }
    )
    meta = {
        "slide": str(Path(slide_path).resolve()),
        "mpp_x": mpp.x,
        "mpp_y": mpp.y,
        "mpp_source": mpp.source,
        "slide_width": width,
        "slide_height": height,
        "tiling": spec.to_dict(),
        "tiling_fingerprint": spec.fingerprint(),
        "patch_px": spec.patch_px,
    }
    return table, meta


def write_tiles(table: pd.DataFrame, meta: dict[str, Any], out: str | Path) -> None:
    """Writes a tiles table to parquet atomically, with its metadata in the schema."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata(
        {**(arrow.schema.metadata or {}), TILES_META_KEY: json.dumps(meta).encode()}
    )
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    pq.write_table(arrow, tmp)
    os.replace(tmp, out)


def read_tiles(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Reads a tiles table and its metadata.

    Raises:
        HistofuseError: If the file is missing or was not written by ``histofuse tile``.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise HistofuseError(f"tiles file {path} does not exist; run `histofuse tile` first")
    arrow = pq.read_table(path)
    raw = (arrow.schema.metadata or {}).get(TILES_META_KEY)
    if raw is None:
        raise HistofuseError(f"tiles file {path} has no histofuse metadata; re-run the tile step")
    return arrow.to_pandas(), json.loads(raw)
