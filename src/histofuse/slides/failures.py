"""Recorded tiling failures: a sample that could not be tiled, kept as data instead of a crash.

With ``tiling.on_error: record`` a sample whose slide or expression file is unusable still gets
its tile job's outputs: an empty tiles table whose metadata carries the error, a stats JSON with
the error and a placeholder QC image. The embed stage skips it and records the error in the
store's provenance (``failed_samples``), the fit stage leaves the sample out and records why
(``missing_samples``), and the report lists it in ``missing.csv``. The other samples finish.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from histofuse.slides.spec import TilingSpec

TILE_COLUMNS = ("x", "y", "x0", "y0", "size0", "tissue", "x_um", "y_um")


def failure_meta(sample: str, slide: str | Path, spec: TilingSpec, error: str) -> dict[str, Any]:
    """The tiles metadata of a sample that could not be tiled."""
    return {
        "sample": sample,
        "slide": str(slide),
        "tiling": spec.to_dict(),
        "tiling_fingerprint": spec.fingerprint(),
        "patch_px": spec.patch_px,
        "n_tiles": 0,
        "error": error,
    }


def write_failure(
    sample: str,
    slide: str | Path,
    spec: TilingSpec,
    error: str,
    tiles_out: Path,
    qc_out: Path,
    stats_out: Path,
) -> None:
    """Writes the tile job's outputs for a failed sample: empty tiles, placeholder QC, stats."""
    from PIL import Image, ImageDraw

    from histofuse.atomic import atomic_path
    from histofuse.slides.tiling import write_stats, write_tiles

    meta = failure_meta(sample, slide, spec, error)
    table = pd.DataFrame({c: pd.Series(dtype="float64") for c in TILE_COLUMNS})
    write_tiles(table, meta, tiles_out)
    img = Image.new("RGB", (400, 60), (250, 235, 235))
    ImageDraw.Draw(img).text((8, 22), f"{sample}: not tiled (see missing.csv)", fill=(150, 0, 0))
    with atomic_path(qc_out) as tmp:
        img.save(tmp)
    write_stats(meta, stats_out, error=error)
