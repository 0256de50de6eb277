"""HEST-1k input: build the normalised sample table from a downloaded HEST-1k style folder.

A HEST-1k folder holds ``wsis/{id}.tif``, ``st/{id}.h5ad`` and ``metadata/{id}.json``; the
metadata's ``pixel_size_um_estimated`` becomes the sample's µm/px (HEST's own estimate, which
takes precedence over the TIFF header, often missing or wrong) with source ``hest-metadata``,
and its ``patient`` the patient id (the sample id when absent). A metadata file without an
estimate leaves the µm/px to the slide's own metadata (OpenSlide properties, TIFF resolution,
vendor keys); a slide with neither stops its tile job with a message naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from histofuse.errors import HistofuseError

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi")


def is_hest1k(path: str | Path) -> bool:
    """Whether ``path`` is a folder with the HEST-1k layout (a ``wsis/`` and an ``st/`` folder)."""
    path = Path(path)
    return path.is_dir() and (path / "wsis").is_dir() and (path / "st").is_dir()


def read_hest1k(folder: str | Path) -> pd.DataFrame:
    """Reads a HEST-1k style folder into the sample table.

    Args:
        folder: The folder with ``wsis/``, ``st/`` and ``metadata/``.

    Returns:
        The table (``sample_id, patient_id, slide, expression, mpp, mpp_source``) indexed by
        ``sample_id``, with absolute paths, one row per slide.

    Raises:
        HistofuseError: Naming the file and the fix, if a slide lacks its expression file or its
            metadata, or the metadata's pixel size is not a positive number.
    """
    folder = Path(folder)
    if not is_hest1k(folder):
        raise HistofuseError(f"{folder} is not a HEST-1k folder; it needs wsis/ and st/ subfolders")
    slides = sorted(p for p in (folder / "wsis").iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)
    if not slides:
        raise HistofuseError(f"HEST-1k folder {folder}: wsis/ holds no slide (.tif, .svs, …)")
    return pd.DataFrame([_sample_row(folder, slide) for slide in slides]).set_index(
        "sample_id", drop=False
    )


def _sample_row(folder: Path, slide: Path) -> dict[str, object]:
    """The sample-table row of one slide of a HEST-1k folder (see :func:`read_hest1k`)."""
    sid = slide.stem
    expression = folder / "st" / f"{sid}.h5ad"
    if not expression.is_file():
        raise HistofuseError(
            f"HEST-1k folder {folder}: {slide.name} has no st/{sid}.h5ad; download it or "
            "remove the slide"
        )
    meta_path = folder / "metadata" / f"{sid}.json"
    meta = _read_metadata(folder, slide, meta_path)
    mpp, source = _pixel_size(meta, meta_path)
    return {
        "sample_id": sid,
        "patient_id": str(meta.get("patient") or sid),
        "slide": str(slide.resolve()),
        "expression": str(expression.resolve()),
        "mpp": mpp,
        "mpp_source": source,
    }


def _read_metadata(folder: Path, slide: Path, meta_path: Path) -> dict:
    """The JSON object of a slide's ``metadata/{id}.json``."""
    if not meta_path.is_file():
        raise HistofuseError(
            f"HEST-1k folder {folder}: {slide.name} has no metadata/{meta_path.name} (it holds "
            "the pixel size); download it"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise HistofuseError(f"HEST-1k metadata {meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise HistofuseError(f"HEST-1k metadata {meta_path} must hold a JSON object")
    return meta


def _pixel_size(meta: dict, meta_path: Path) -> tuple[float, str]:
    """(µm/px, its source) from the metadata's estimate; NaN and ``""`` when it has none."""
    estimate = meta.get("pixel_size_um_estimated")
    if estimate is None:
        return float("nan"), ""  # the slide's own metadata decides at tile time
    try:
        mpp = float(estimate)
    except (TypeError, ValueError):
        mpp = float("nan")
    if not mpp > 0 or mpp == float("inf"):
        raise HistofuseError(
            f"HEST-1k metadata {meta_path}: `pixel_size_um_estimated` = {estimate!r} is "
            "not a positive number; fix the file or write a sample sheet with an `mpp` "
            "column"
        )
    return mpp, "hest-metadata"
