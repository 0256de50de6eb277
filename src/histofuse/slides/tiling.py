"""Tiling: coordinates of grid tiles or spot-centred patches at a true target µm/px.

Tiling writes coordinates, never pixels: every encoder later reads the same patches through
:class:`histofuse.slides.reader.TileDataset`. A tiles table has one row per patch with its centre
and top-left corner in level-0 pixels, the patch side in level-0 pixels, centre in µm, its
tissue fraction and, for spots, the barcode. The table's parquet metadata holds the slide path,
µm/px and its source, the read level and the tiling spec, so that a tiles file is
self-describing.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.atomic import atomic_path, write_parquet, write_text
from histofuse.data.expression import BARCODES_FIX, GENES_FIX, check_unique, read_expression
from histofuse.errors import HistofuseError
from histofuse.slides.mpp import MppLimits
from histofuse.slides.spec import TilingSpec
from histofuse.slides.tissue import TissueMask, detect_tissue
from histofuse.slides.wsi import Mpp, best_level, open_slide, slide_mpp

TILES_META_KEY = b"histofuse"


def read_spots(expression: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads spot barcodes and level-0 pixel centres (x, y) from an expression file.

    The file is an AnnData ``.h5ad`` or a Space Ranger ``outs/`` folder (see
    :mod:`histofuse.data.spaceranger`).

    Raises:
        HistofuseError: If the file is missing, unreadable, has no ``obsm["spatial"]``, or
            repeats a barcode or a gene name (found here, before any tile is embedded).
    """
    path = Path(expression)
    if not path.exists():
        raise HistofuseError(f"expression file {path} does not exist; check the sample sheet")
    adata = read_expression(path, backed="r")
    try:
        if "spatial" not in adata.obsm:
            raise HistofuseError(
                f"expression file {path} has no obsm['spatial'] spot coordinates (level-0 px, x, y)"
            )
        check_unique(adata.obs_names, path, "barcodes", BARCODES_FIX)
        check_unique(adata.var_names, path, "gene names", GENES_FIX)
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
        barcodes = np.asarray(adata.obs_names, dtype=str)
    finally:
        adata.file.close()
    if not np.isfinite(xy).all():
        raise HistofuseError(f"expression file {path} has non-finite spot coordinates")
    return barcodes, xy


def _slide_meta(
    slide_path: str | Path,
    mpp: Mpp,
    width: int,
    height: int,
    spec: TilingSpec,
    level: int,
    ds: float,
) -> dict[str, Any]:
    return {
        "slide": str(Path(slide_path).resolve()),
        "mpp_x": mpp.x,
        "mpp_y": mpp.y,
        "mpp_source": mpp.source,
        "slide_width": width,
        "slide_height": height,
        "tiling": spec.to_dict(),
        "tiling_fingerprint": spec.fingerprint(),
        "patch_px": spec.patch_px,
        "read_level": level,
        "read_downsample": ds,
    }


def _boxes(cx: np.ndarray, cy: np.ndarray, size0: float) -> dict[str, np.ndarray]:
    """Level-0 boxes of side ``round(size0)`` whose centres are within one pixel of (cx, cy)."""
    side = max(1, round(size0))
    return {
        "x0": np.floor(cx - size0 / 2).astype(np.int64),
        "y0": np.floor(cy - size0 / 2).astype(np.int64),
        "size0": np.full(len(cx), side, dtype=np.int64),
    }


def tile_sample(
    slide_path: str | Path,
    spec: TilingSpec,
    expression: str | Path | None = None,
    mpp_override: float | None = None,
    mpp_source: str = "override",
    min_spots_on_tissue: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], TissueMask]:
    """Tiles one sample in the spec's mode.

    ``grid`` covers the slide with tiles of ``spec.patch_um`` every ``spec.step_um`` and keeps
    those whose tissue fraction is at least ``spec.min_tissue``; ``spots`` centres one patch on
    each spot of ``expression`` (keeping its barcode) and keeps those whose tissue fraction is at
    least ``spec.spot_min_tissue`` (0, every spot, by default). Both record every tile's tissue
    fraction, and the metadata counts the candidates and the tiles dropped for too little tissue.
    In ``spots`` mode the fraction of spot centres on detected tissue is recorded
    (``spots_on_tissue``); too few, or any spot outside the slide, is an error (see
    :func:`check_spot_placement`): the coordinates do not belong to this slide or are not
    level-0 pixels, which dropping or keeping would hide.

    Args:
        slide_path: The whole-slide image.
        spec: The tiling spec.
        expression: The ``.h5ad`` with spot centres (``spots`` mode).
        mpp_override: The sheet's µm/px for this slide, if set.
        mpp_source: Where ``mpp_override`` came from (recorded as the µm/px source).
        min_spots_on_tissue: The smallest accepted fraction of spot centres on tissue
            (``tiling.min_spots_on_tissue``; ``None``: the schema's default).

    Returns:
        The tiles table, its metadata (slide, µm/px and source, spec, read level, effective
        µm/px, counts, timings) and the tissue mask.

    Raises:
        HistofuseError: On a missing or unreadable slide, a slide without µm/px, a missing
            expression file in ``spots`` mode, or spots off the tissue or outside the slide.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with open_slide(slide_path) as slide:
        mpp = slide_mpp(slide, slide_path, mpp_override, mpp_source)
        width, height = slide.dimensions
        target_ds = spec.target_mpp / mpp.x
        level = best_level(tuple(slide.level_downsamples), target_ds)
        ds = float(slide.level_downsamples[level])
        timings["open"] = time.perf_counter() - t0
        tissue = detect_tissue(slide, mpp.x, spec.tissue, str(slide_path))
        timings["tissue"] = time.perf_counter() - t0 - timings["open"]
    size0 = spec.patch_um / mpp.x
    table = _candidates(slide_path, spec, expression, mpp, size0, (width, height))
    on_tissue = None
    if spec.mode == "spots":
        if min_spots_on_tissue is None:  # the schema's, with the other tile-time limits
            min_spots_on_tissue = MppLimits.from_config().min_spots_on_tissue
        where = (slide_path, expression or "")
        on_tissue = check_spot_placement(table, tissue, (width, height), where, min_spots_on_tissue)
    table["tissue"] = tissue.box_fractions(table["x0"], table["y0"], table["size0"])
    n_candidates = len(table)
    threshold = spec.min_tissue if spec.mode == "grid" else spec.spot_min_tissue
    if threshold > 0:
        table = table[table["tissue"] >= threshold].reset_index(drop=True)
    table["x_um"] = table["x"] * mpp.x
    table["y_um"] = table["y"] * mpp.y
    timings["tile"] = time.perf_counter() - t0 - timings["open"] - timings["tissue"]
    meta = _slide_meta(slide_path, mpp, width, height, spec, level, ds)
    side = int(table["size0"].iloc[0]) if len(table) else max(1, round(size0))
    meta.update(
        effective_mpp=side * mpp.x / spec.patch_px,
        n_tiles=len(table),
        n_candidates=n_candidates,
        n_dropped_tissue=n_candidates - len(table),
        min_tissue=threshold,
        spots_on_tissue=on_tissue,
        min_spots_on_tissue=min_spots_on_tissue if on_tissue is not None else None,
        **tissue.to_meta(),
        timings=timings,
    )
    return table, meta, tissue


def _candidates(
    slide_path: str | Path,
    spec: TilingSpec,
    expression: str | Path | None,
    mpp: Mpp,
    size0: float,
    size: tuple[int, int],
) -> pd.DataFrame:
    """The candidate patches of the spec's mode (before the tissue filter), level-0 px."""
    if spec.mode == "spots":
        if not expression:
            raise HistofuseError(
                f"slide {slide_path}: spots tiling needs an expression file; set the "
                "`expression` column of the sheet or use tiling mode grid"
            )
        return _spot_table(expression, size0)
    if spec.mode == "grid":
        return _grid_table(size0, spec.step_um / mpp.x, *size)
    raise HistofuseError(f"tiling mode {spec.mode!r} is unknown; use spots or grid")


def _grid_table(size0: float, step0: float, width: int, height: int) -> pd.DataFrame:
    """Tiles of side ``size0`` every ``step0`` level-0 px that fit on the slide."""
    nx = int(np.floor((width - size0) / step0 + 1e-9)) + 1 if width >= size0 else 0
    ny = int(np.floor((height - size0) / step0 + 1e-9)) + 1 if height >= size0 else 0
    gy, gx = np.mgrid[0:ny, 0:nx]
    cx = gx.ravel() * step0 + size0 / 2
    cy = gy.ravel() * step0 + size0 / 2
    return pd.DataFrame({"x": cx, "y": cy, **_boxes(cx, cy, size0)})


def _spot_table(expression: str | Path, size0: float) -> pd.DataFrame:
    barcodes, xy = read_spots(expression)
    return pd.DataFrame({"barcode": barcodes, "x": xy[:, 0], "y": xy[:, 1], **_boxes(*xy.T, size0)})


def check_spot_placement(
    table: pd.DataFrame,
    tissue: TissueMask,
    size: tuple[int, int],
    where: tuple[str | Path, str | Path],
    min_on_tissue: float,
) -> float:
    """Checks that the spots belong to the slide; returns the fraction of centres on tissue.

    A spot counts as on tissue when its centre lies inside the image, on the detected tissue.
    Too few such spots means the coordinates do not match the slide (swapped x/y, µm instead of
    level-0 pixels, a wrong scale factor, another slide's image): that is an error naming these
    causes, checked first since it explains spots outside the slide too. Any spot outside the
    slide is then an error as well: dropping it would hide a wrong coordinate frame.

    Args:
        table: Spot candidates (``barcode``, ``x``, ``y`` in level-0 px).
        tissue: The slide's tissue mask.
        size: The slide's level-0 width and height.
        where: The slide and the expression file (named in messages).
        min_on_tissue: The smallest accepted fraction (``tiling.min_spots_on_tissue``).

    Raises:
        HistofuseError: If too few spot centres lie on tissue, or any lies outside the slide.
    """
    (width, height), (slide_path, expression) = size, where
    x, y = table["x"].to_numpy(), table["y"].to_numpy()
    outside = (x < 0) | (y < 0) | (x >= width) | (y >= height)
    on = tissue.on_tissue(x, y) & ~outside
    fraction = float(on.mean()) if len(on) else 1.0
    if fraction < min_on_tissue:
        raise HistofuseError(
            f"expression file {expression}: only {fraction:.0%} of {len(on)} spot centres lie on "
            f"the tissue of slide {slide_path} ({int(outside.sum())} outside slide bounds of "
            f"{width}×{height} px; tissue covers {tissue.fraction:.0%} of it); likely causes: "
            "x/y swapped in obsm['spatial'], coordinates in µm instead of full-resolution "
            "(level-0) pixels, a wrong scale factor (hires or lowres instead of fullres), or the "
            "wrong slide; fix "
            f"the coordinates, or lower `tiling.min_spots_on_tissue` ({min_on_tissue:g}) if "
            "they are right"
        )
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise HistofuseError(
            f"expression file {expression}: {int(outside.sum())} spot centres lie outside slide "
            f"{slide_path} ({width}×{height} px), e.g. {table['barcode'].iloc[i]} at "
            f"{[x[i], y[i]]}; obsm['spatial'] must hold level-0 pixel (x, y) coordinates of "
            "this slide"
        )
    return fraction


def tile_spots(
    slide_path: str | Path,
    expression: str | Path,
    spec: TilingSpec,
    mpp_override: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Computes one patch of ``spec.patch_um`` centred on each spot (see :func:`tile_sample`)."""
    spec = spec if spec.mode == "spots" else replace(spec, mode="spots")
    table, meta, _ = tile_sample(slide_path, spec, expression, mpp_override)
    return table, meta


def write_qc(
    table: pd.DataFrame, meta: dict[str, Any], tissue: TissueMask, out: str | Path
) -> None:
    """Writes a QC thumbnail: the tissue level with the tissue contour and every tile drawn."""
    from PIL import Image, ImageDraw
    from skimage import measure

    scale = max(1.0, 800 / max(tissue.rgb.shape[:2]))
    img = Image.fromarray(tissue.rgb)
    if scale > 1:
        size = (round(img.width * scale), round(img.height * scale))
        img = img.resize(size, Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(img)
    f = scale / tissue.downsample
    for x0, y0, s0 in table[["x0", "y0", "size0"]].to_numpy():
        draw.rectangle(
            [x0 * f, y0 * f, (x0 + s0) * f - 1, (y0 + s0) * f - 1], outline=(30, 90, 230)
        )
    for contour in measure.find_contours(np.pad(tissue.mask, 1).astype(float), 0.5):
        pts = [((c - 1 + 0.5) * scale, (r - 1 + 0.5) * scale) for r, c in contour]
        if len(pts) > 1:
            draw.line(pts, fill=(20, 200, 60), width=2)
    with atomic_path(out) as tmp:
        img.save(tmp)


def write_stats(meta: dict[str, Any], out: str | Path, **extra: Any) -> None:
    """Writes the per-sample tiling summary (counts, µm/px and its source, timings) as JSON.

    ``warnings`` (e.g. a slide without a pyramid, a doubtful µm/px) is a list, empty if none.
    """
    keys = (
        "sample", "slide", "mpp_x", "mpp_y", "mpp_source", "effective_mpp", "read_level",
        "read_downsample", "n_tiles", "n_candidates", "n_dropped_tissue", "min_tissue",
        "tissue_fraction", "tissue_level", "tissue_downsample", "spots_on_tissue",
        "min_spots_on_tissue", "timings", "tiling", "warnings",
    )  # fmt: skip
    stats = {**{k: meta.get(k) for k in keys}, "warnings": meta.get("warnings") or [], **extra}
    write_text(json.dumps(stats, indent=2) + "\n", out)


def write_tiles(table: pd.DataFrame, meta: dict[str, Any], out: str | Path) -> None:
    """Writes a tiles table to parquet atomically, with its metadata in the schema."""
    write_parquet(table, out, meta, key=TILES_META_KEY)


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
