"""The slides page: what the tiling made of each slide, from the tile jobs' stats files.

A study without tasks (tiles and features only) gets this page as its report; it lists every
slide with its tiles, its µm/px and where that value came from, its warnings and, for a slide that
could not be tiled (``tiling.on_error: record``), its error, and links each slide's QC picture.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pandas as pd

from histofuse.errors import HistofuseError

#: Columns of ``slides.csv``, in order.
COLUMNS = (
    "sample",
    "slide",
    "tiles",
    "mpp",
    "mpp_source",
    "effective_mpp",
    "tissue_fraction",
    "warnings",
    "error",
)


def read_stats(path: str | Path) -> dict:
    """A tile job's stats JSON (``results/tiles/{sample}.json``), checked.

    Raises:
        HistofuseError: If it cannot be read, or names no ``sample``.
    """
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HistofuseError(
            f"tile stats {path} cannot be read ({exc}); delete it and run again to retile"
        ) from None
    if not isinstance(stats, dict) or "sample" not in stats:
        raise HistofuseError(f"tile stats {path} has no `sample`; delete it and run again")
    return stats


def _row(path: Path) -> dict:
    """One slide's row from its stats JSON (``results/tiles/{sample}.json``)."""
    stats = read_stats(path)
    tissue = stats.get("tissue_fraction")
    return {
        "sample": stats["sample"],
        "slide": stats.get("slide", ""),
        "tiles": int(stats.get("n_tiles") or 0),
        "mpp": stats.get("mpp_x"),
        "mpp_source": stats.get("mpp_source") or "",
        "effective_mpp": stats.get("effective_mpp"),
        "tissue_fraction": None if tissue is None else round(tissue, 3),
        "warnings": "; ".join(stats.get("warnings") or []),
        "error": stats.get("error") or "",
    }


def slides_table(stats_files: list[str | Path]) -> pd.DataFrame:
    """One row per slide (:data:`COLUMNS`) from the tile jobs' stats files, in the given order.

    Raises:
        HistofuseError: If no file is given, or one cannot be read.
    """
    if not stats_files:
        raise HistofuseError("the slides page needs at least one tile stats file (--stats)")
    return pd.DataFrame([_row(Path(p)) for p in stats_files], columns=list(COLUMNS))


def _qc_link(stats_file: Path, out_dir: Path) -> str:
    """A link to the QC picture beside a stats file (``{sample}.qc.png``), relative to the page."""
    qc = stats_file.with_name(stats_file.name.removesuffix(".json") + ".qc.png")
    href = html.escape(os.path.relpath(qc, out_dir))
    return f'<a href="{href}"><img src="{href}" height="80"></a>'


def write_slides_page(stats_files: list[str | Path], out_dir: str | Path) -> pd.DataFrame:
    """Writes ``slides.csv`` and ``slides.html`` (with each slide's QC picture) to ``out_dir``.

    Args:
        stats_files: The tile jobs' stats JSON files, one per slide.
        out_dir: The report folder.

    Returns:
        The table written to ``slides.csv``.

    Raises:
        HistofuseError: If no file is given, or one cannot be read.
    """
    from histofuse.atomic import write_text

    out_dir = Path(out_dir)
    table = slides_table(stats_files)
    write_text(table.to_csv(index=False), out_dir / "slides.csv")
    text = table.fillna("").astype(str).map(html.escape)
    shown = text.assign(qc=[_qc_link(Path(p), out_dir) for p in stats_files])
    failed = int((table["error"] != "").sum())
    summary = (
        f"{len(table)} slides, {int(table['tiles'].sum())} tiles"
        + (f", {failed} not tiled (see the error column)" if failed else "")
        + ". mpp: the slide's µm per level-0 pixel; mpp_source: where it came from (slide"
        " metadata, the sheet's override, HEST metadata); effective_mpp: the tiles' µm/px."
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>histofuse slides</title>"
        "</head><body><h1>Slides</h1>"
        f"<p>{html.escape(summary)}</p>"
        f"{shown.to_html(index=False, escape=False)}"
        "</body></html>\n"
    )
    write_text(page, out_dir / "slides.html")
    return table
