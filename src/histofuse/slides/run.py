"""Tiling runs: one sample, or the chosen samples of a sheet, written as tiles, QC and stats.

Each sample gets three files: its tiles table (``{sample}.parquet``), a QC picture
(``{sample}.qc.png``) and a stats JSON (``{sample}.json``). A sample with pre-cut patches (HEST)
instead of a slide gets the same three from its patches file.

What happens to a sample that cannot be tiled is run policy, not part of the spec: with
``on_error="record"`` its error is written in place of its tiles (see
:mod:`histofuse.slides.failures`) and the run goes on; with ``"stop"`` the run stops, unless
``keep_going`` asks to tile the other samples first and fail at the end.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histofuse.errors import HistofuseError
from histofuse.slides.spec import TilingSpec

if TYPE_CHECKING:
    import pandas as pd

    from histofuse.slides.mpp import MppCheck, MppLimits
    from histofuse.slides.tissue import TissueMask


def beside(tiles: Path, suffix: str) -> Path:
    """``{sample}.parquet`` → ``{sample}{suffix}``; sample ids may hold dots (``task.id``)."""
    return tiles.with_name(tiles.name.removesuffix(".parquet") + suffix)


@dataclass(frozen=True)
class TileJob:
    """One sample to tile, and where its files go.

    Attributes:
        sample: The sample id (recorded in the tiles' metadata).
        source: The slide, or the pre-cut patches ``.h5`` (see :func:`tile_patches`).
        out: The tiles table (``….parquet``).
        expression: The ``.h5ad`` with spot centres (``spots`` mode), if any.
        mpp: A µm/px override for the slide, if any.
        mpp_source: Where ``mpp`` came from (recorded as the µm/px source).
        qc: The QC picture, if not beside ``out`` (see :attr:`qc_out`).
        stats: The stats JSON, if not beside ``out`` (see :attr:`stats_out`).
    """

    sample: str
    source: str
    out: Path
    expression: str | None = None
    mpp: float | None = None
    mpp_source: str = "override"
    qc: Path | None = None
    stats: Path | None = None

    @property
    def qc_out(self) -> Path:
        """The QC picture: ``qc``, else ``{sample}.qc.png`` beside the tiles."""
        return self.qc or beside(self.out, ".qc.png")

    @property
    def stats_out(self) -> Path:
        """The stats JSON: ``stats``, else ``{sample}.json`` beside the tiles."""
        return self.stats or beside(self.out, ".json")


def tile_patches(job: TileJob, spec: TilingSpec) -> None:
    """Tiles a pre-cut patches file (HEST ``patches/*.h5``, ``job.source``): tiles, QC, stats.

    Raises:
        HistofuseError: If the patches file is missing or malformed.
    """
    from histofuse.slides.patches import patch_tiles, write_patch_qc
    from histofuse.slides.tiling import write_stats, write_tiles

    table, meta = patch_tiles(job.source, spec)
    meta["sample"] = job.sample
    write_tiles(table, meta, job.out)
    write_patch_qc(table, meta, job.qc_out)
    write_stats(meta, job.stats_out, patches=meta["patches"], stored_px=meta["stored_px"])
    logging.info("%s: %d pre-cut patches from %s", job.sample, len(table), job.source)


def _tile_checked(
    job: TileJob, spec: TilingSpec, limits: MppLimits
) -> tuple[pd.DataFrame, dict[str, Any], TissueMask, MppCheck]:
    """Checks the slide's µm/px (:func:`histofuse.slides.mpp.check_mpp`), then tiles it.

    A Space Ranger ``outs/`` expression folder adds its spot pitch's µm/px as the fallback.

    Returns:
        The tiles table, its metadata (with the check's fields), the tissue mask, the check.
    """
    from histofuse.slides.mpp import check_mpp, spot_pitch_mpp
    from histofuse.slides.tiling import tile_sample

    pitch = spot_pitch_mpp(job.expression)
    checked = check_mpp(job.source, spec.target_mpp, limits, job.mpp, job.mpp_source, pitch)
    used = (
        (checked.mpp.x, checked.mpp.source) if checked.mpp == pitch else (job.mpp, job.mpp_source)
    )
    table, meta, mask = tile_sample(
        job.source,
        spec,
        job.expression or None,
        *used,
        min_spots_on_tissue=limits.min_spots_on_tissue,
    )
    slide_warnings = meta.get("warnings") or []  # logged when found (no pyramid)
    meta.update(checked.to_meta())
    meta["warnings"] = [*checked.warnings, *slide_warnings]
    for warning in checked.warnings:
        print(f"histofuse: warning: sample {job.sample}: {warning}", file=sys.stderr)
    return table, meta, mask, checked


def tile_one(
    job: TileJob, spec: TilingSpec, on_error: str, limits: MppLimits | None = None
) -> None:
    """Tiles one sample and writes its tiles table, QC picture and stats.

    The slide's µm/px is checked first (:mod:`histofuse.slides.mpp`); its own metadata value,
    the upsampling factor and any warning are recorded in the tiles' metadata and stats.

    Args:
        job: The sample and its files.
        spec: The tiling spec.
        on_error: ``record`` writes a sample that cannot be tiled as a recorded failure (and
            says so on stderr); ``stop`` raises.
        limits: The µm/px plausibility limits (``None``: the schema's defaults).

    Raises:
        HistofuseError: Naming the sample, if it cannot be tiled and ``on_error`` is ``stop``.
    """
    from histofuse.slides.mpp import MppLimits
    from histofuse.slides.tiling import write_qc, write_stats, write_tiles

    try:
        table, meta, mask, checked = _tile_checked(job, spec, limits or MppLimits.from_config())
    except HistofuseError as exc:
        if on_error != "record":
            raise HistofuseError(f"sample {job.sample}: {exc}") from None
        from histofuse.slides.failures import write_failure

        print(f"histofuse: error: sample {job.sample}: {exc} (recorded)", file=sys.stderr)
        write_failure(job.sample, job.source, spec, str(exc), job.out, job.qc_out, job.stats_out)
        return
    meta["sample"] = job.sample
    write_tiles(table, meta, job.out)
    write_qc(table, meta, mask, job.qc_out)
    write_stats(meta, job.stats_out, **{**checked.to_meta(), "warnings": meta["warnings"]})
    logging.info(
        "%s: %d %s tiles (%d dropped for tissue < %g) of %d px at %.4g µm/px"
        " (slide %.4g µm/px from %s, resampled %.3g×)",
        job.sample,
        len(table),
        spec.mode,
        meta["n_dropped_tissue"],
        meta["min_tissue"],
        spec.patch_px,
        meta["effective_mpp"],
        meta["mpp_x"],
        meta["mpp_source"],
        meta["upsample"],
    )


def tile_all(
    jobs: list[TileJob],
    spec: TilingSpec,
    on_error: str,
    keep_going: bool,
    limits: MppLimits | None = None,
) -> None:
    """Tiles several samples (see :func:`tile_one`).

    Args:
        jobs: The samples.
        spec: The tiling spec.
        on_error: ``stop`` or ``record`` (see :func:`tile_one`).
        keep_going: With ``stop``, tile the other samples after one fails, then raise.
        limits: The µm/px plausibility limits (``None``: the schema's defaults).

    Raises:
        HistofuseError: If a sample cannot be tiled (after the others, with ``keep_going``).
    """
    failed = []
    for job in jobs:
        try:
            tile_one(job, spec, on_error, limits)
        except HistofuseError as exc:
            if not keep_going:
                raise
            print(f"histofuse: error: {exc}", file=sys.stderr)
            failed.append(job.sample)
    if failed:
        raise HistofuseError(
            f"{len(failed)} of {len(jobs)} samples failed ({', '.join(failed)}); "
            "the others were tiled"
        )


def _hest_bench_patches(tasks: list[tuple[str, str]]) -> dict[str, str]:
    """The patches files of the samples of HEST-Bench tasks (``(task, folder)`` pairs), by id."""
    from histofuse.hest_bench import bench_samples

    out: dict[str, str] = {}
    for task, folder in tasks:
        out.update(bench_samples(task, folder)["patches"].to_dict())
    return out


def tile_sheet(
    sheet_path: str | Path,
    samples: list[str],
    out_dir: Path,
    spec: TilingSpec,
    on_error: str,
    keep_going: bool,
    hest_bench: list[tuple[str, str]],
    limits: MppLimits | None = None,
) -> None:
    """Tiles the given samples of a sample sheet into ``out_dir/{sample}.parquet`` (+ QC, stats).

    Args:
        sheet_path: The sample sheet, or a HEST-1k folder (see
            :func:`histofuse.samples.load_samples`).
        samples: The samples to tile: of the sheet, or of the HEST-Bench tasks.
        out_dir: The folder of the tiles, QC pictures and stats.
        spec: The tiling spec.
        on_error: ``stop`` or ``record`` (see :func:`tile_one`).
        keep_going: With ``stop``, tile the other samples after one fails, then raise.
        hest_bench: ``(task, folder)`` of HEST-Bench tasks whose samples are pre-cut patches.
        limits: The µm/px plausibility limits (``None``: the schema's defaults).

    Raises:
        HistofuseError: If a sample is in neither the sheet nor the tasks, or cannot be tiled.
    """
    from histofuse.samples import load_samples

    # With keep_going or record, a missing file fails only its own sample, not the whole sheet.
    sheet = load_samples(sheet_path, check_files=not (keep_going or on_error == "record"))
    bench = _hest_bench_patches(hest_bench)
    unknown = sorted(set(samples) - set(sheet.index) - set(bench))
    if unknown:
        raise HistofuseError(f"samples {unknown} are not in sheet {sheet_path}")
    for s in [s for s in samples if s in bench]:  # pre-cut patches, no slide
        tile_patches(TileJob(s, bench[s], out_dir / f"{s}.parquet"), spec)
    jobs = [
        TileJob(
            s,
            sheet.at[s, "slide"],
            out_dir / f"{s}.parquet",
            expression=sheet.at[s, "expression"],
            mpp=None if sheet.at[s, "mpp"] != sheet.at[s, "mpp"] else sheet.at[s, "mpp"],
            mpp_source=sheet.at[s, "mpp_source"] or "override",
        )
        for s in samples
        if s not in bench
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    tile_all(jobs, spec, on_error, keep_going, limits)
