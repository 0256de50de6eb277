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
    rows = []
    for slide in slides:
        sid = slide.stem
        expression = folder / "st" / f"{sid}.h5ad"
        meta_path = folder / "metadata" / f"{sid}.json"
        if not expression.is_file():
            raise HistofuseError(
                f"HEST-1k folder {folder}: {slide.name} has no st/{sid}.h5ad; download it or "
                "remove the slide"
            )
        if not meta_path.is_file():
            raise HistofuseError(
                f"HEST-1k folder {folder}: {slide.name} has no metadata/{sid}.json (it holds the "
                "pixel size); download it"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise HistofuseError(f"HEST-1k metadata {meta_path} is not valid JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise HistofuseError(f"HEST-1k metadata {meta_path} must hold a JSON object")
        estimate = meta.get("pixel_size_um_estimated")
        if estimate is None:
            mpp, source = float("nan"), ""  # the slide's own metadata decides at tile time
        else:
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
            source = "hest-metadata"
        patient = meta.get("patient") or sid
        rows.append(
            {
                "sample_id": sid,
                "patient_id": str(patient),
                "slide": str(slide.resolve()),
                "expression": str(expression.resolve()),
                "mpp": mpp,
                "mpp_source": source,
            }
        )
    return pd.DataFrame(rows).set_index("sample_id", drop=False)
