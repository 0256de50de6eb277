"""The ``tile`` verb: tile coordinates (spots or grid) of one or more samples."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from histofuse.cli import document
from histofuse.errors import HistofuseError

if TYPE_CHECKING:
    from histofuse.slides.run import TileJob


def _hest_bench_tasks(specs: list[str]) -> list[tuple[str, str]]:
    """``TASK=FOLDER`` options → ``(task, folder)`` pairs."""
    tasks = []
    for spec in specs:
        task, sep, folder = spec.partition("=")
        if not sep or not task or not folder:
            raise HistofuseError(f"tile --hest-bench {spec!r} must be TASK=FOLDER")
        tasks.append((task, folder))
    return tasks


def _one_job(args: argparse.Namespace) -> TileJob:
    """The job of the one-sample forms (``--slide`` or ``--patches``, with ``--out``)."""
    from histofuse.slides.run import TileJob

    if args.patches:
        if len(args.sample) != 1 or not args.out:
            raise HistofuseError("tile --patches needs one --sample and --out")
    elif len(args.sample) != 1 or not (args.slide and args.out):
        raise HistofuseError("tile needs one --sample with --slide and --out")
    if args.qc and Path(args.qc).suffix.lower() != ".png":
        raise HistofuseError(f"tile --qc {args.qc}: the QC thumbnail is a PNG; end it in .png")
    return TileJob(
        sample=args.sample[0],
        source=args.patches or args.slide,
        out=Path(args.out),
        expression=args.expression,
        mpp=args.mpp,
        mpp_source=args.mpp_source,
        qc=Path(args.qc) if args.qc else None,
        stats=Path(args.stats) if args.stats else None,
    )


def _every_row(args: argparse.Namespace) -> list[str]:
    """The samples of ``tile --sheet`` without ``--sample``: every row of the sheet."""
    from histofuse.samples import load_samples

    if args.hest_bench:
        raise HistofuseError("tile --hest-bench: name the samples to tile with --sample")
    return list(load_samples(args.sheet, check_files=False).index)


def _tile(args: argparse.Namespace) -> None:
    from histofuse.settings import section
    from histofuse.slides.mpp import MppLimits
    from histofuse.slides.run import tile_all, tile_patches, tile_sheet
    from histofuse.slides.spec import TilingSpec

    if args.qc and Path(args.qc).suffix.lower() != ".png":
        raise HistofuseError(
            f"tile --qc {args.qc}: the QC thumbnail is a PNG; end its name in .png"
        )
    tiling = section("tiling", document(args.tiling, "--tiling") if args.tiling else None)
    if args.on_error:
        tiling["on_error"] = args.on_error
    spec = TilingSpec.from_config(tiling)
    limits = MppLimits.from_config(tiling)
    if args.sheet and not args.patches:
        if not args.out_dir:
            raise HistofuseError("tile --sheet needs --out-dir")
        if args.qc or args.stats:
            raise HistofuseError("tile --qc/--stats name one sample's files; not with --sheet")
        hest_bench = _hest_bench_tasks(args.hest_bench or [])
        tile_sheet(
            args.sheet,
            args.sample or _every_row(args),
            Path(args.out_dir),
            spec,
            tiling["on_error"],
            args.keep_going,
            hest_bench,
            limits,
        )
    elif args.patches:
        tile_patches(_one_job(args), spec)
    else:
        tile_all([_one_job(args)], spec, tiling["on_error"], args.keep_going, limits)


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this module's verbs to the ``histofuse`` parser."""
    s = sub.add_parser("tile", help="tile coordinates (spots or grid) of one or more samples")
    s.add_argument(
        "--sample",
        action="append",
        default=[],
        help="sample id of the sheet; once with --slide or --patches; repeat with --sheet "
        "(default: none, every row of the sheet)",
    )
    s.add_argument(
        "--tiling",
        help="the config's `tiling` section: inline JSON or a .json/.yaml file (unset keys take "
        "the schema's defaults; on_error decides what a sample that cannot be tiled does; "
        "default: all of the schema's `tiling` defaults)",
    )
    s.add_argument(
        "--on-error",
        choices=("stop", "record"),
        help="overrides the section's on_error (used by the workflow, which passes it apart from "
        "--tiling; default: the section's tiling.on_error)",
    )
    s.add_argument(
        "--sheet",
        help="sample sheet: tile the given samples (all rows without --sample) into --out-dir "
        "(default: none)",
    )
    s.add_argument(
        "--out-dir", help="folder of {sample}.parquet files (with --sheet; default: none)"
    )
    s.add_argument("--slide", help="whole-slide image of the one --sample (default: none)")
    s.add_argument(
        "--expression",
        help=".h5ad with obsm['spatial'] (spot centres, level-0 px), or a Space Ranger outs/ "
        "folder, whose spots are tiled in tiling.mode `spots` (default: none)",
    )
    s.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="µm/px of the slide's level 0, overriding its metadata (default: read from the slide)",
    )
    s.add_argument(
        "--mpp-source",
        default="override",
        help="where --mpp came from, recorded in the stats (used by the workflow, e.g. "
        "hest-metadata; default: %(default)s)",
    )
    s.add_argument("--out", help="tiles parquet of the one --sample (default: none)")
    s.add_argument("--qc", help="QC thumbnail, .png (default: beside --out, .qc.png)")
    s.add_argument("--stats", help="counts/timings JSON (default: beside --out, .json)")
    s.add_argument(
        "--keep-going",
        action="store_true",
        help="tile the other samples when one fails (default: off)",
    )
    s.add_argument(
        "--patches",
        help="pre-cut patches .h5 (HEST) used instead of a slide, with one --sample and --out "
        "(default: none)",
    )
    s.add_argument(
        "--hest-bench",
        action="append",
        metavar="TASK=FOLDER",
        help="with --sheet: also tile the pre-cut patches of this HEST-Bench task's samples "
        "(used by the workflow; repeatable; default: none)",
    )
    s.set_defaults(func=_tile)
