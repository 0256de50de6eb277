"""The ``tile`` verb: tile coordinates (spots or grid) of one or more samples."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from histofuse.errors import HistofuseError


def _beside(tiles: Path, suffix: str) -> Path:
    """``{sample}.parquet`` → ``{sample}{suffix}``; sample ids may hold dots (``task.id``)."""
    return tiles.with_name(tiles.name.removesuffix(".parquet") + suffix)


def _hest_bench_samples(specs: list[str]) -> dict[str, str]:
    """``TASK=FOLDER`` options → the HEST-Bench samples' ids and patches files."""
    from histofuse.hest_bench import bench_samples

    out: dict[str, str] = {}
    for spec in specs:
        task, sep, folder = spec.partition("=")
        if not sep or not task or not folder:
            raise HistofuseError(f"tile --hest-bench {spec!r} must be TASK=FOLDER")
        out.update(bench_samples(task, folder)["patches"].to_dict())
    return out


def _tile_patches(args: argparse.Namespace, sample: str, patches: str, out: Path) -> None:
    """Tiles a pre-cut patches file (HEST ``patches/*.h5``): tiles table, QC sheet, stats."""
    from histofuse.slides.patches import patch_tiles, write_patch_qc
    from histofuse.slides.tiling import write_stats, write_tiles

    table, meta = patch_tiles(patches, args.patch_um, args.target_mpp)
    meta["sample"] = sample
    one = out.name == Path(args.out or "").name  # --qc/--stats name one sample's files
    write_tiles(table, meta, out)
    write_patch_qc(table, meta, Path(args.qc) if args.qc and one else _beside(out, ".qc.png"))
    stats = Path(args.stats) if args.stats and one else _beside(out, ".json")
    write_stats(meta, stats, patches=meta["patches"], stored_px=meta["stored_px"])
    logging.info("%s: %d pre-cut patches from %s", sample, len(table), patches)


def _tile(args: argparse.Namespace) -> None:
    from pathlib import Path

    from histofuse.samples import load_samples
    from histofuse.slides.spec import TilingSpec
    from histofuse.slides.tiling import tile_sample, write_qc, write_stats, write_tiles
    from histofuse.slides.tissue import TissueParams

    try:
        tissue = TissueParams(**json.loads(args.tissue))
    except (TypeError, ValueError) as exc:
        raise HistofuseError(f"tile --tissue {args.tissue!r} is not valid: {exc}") from None
    spec = TilingSpec(
        mode=args.mode,
        patch_um=args.patch_um,
        target_mpp=args.target_mpp,
        stride_um=args.stride_um,
        min_tissue=args.min_tissue,
        spot_min_tissue=args.spot_min_tissue,
        tissue=tissue,
    )
    if args.patches:
        if len(args.sample) != 1 or not args.out:
            raise HistofuseError("tile --patches needs one --sample and --out")
        _tile_patches(args, args.sample[0], args.patches, Path(args.out))
        return
    if args.sheet:
        if not args.out_dir:
            raise HistofuseError("tile --sheet needs --out-dir")
        # With --keep-going a missing file fails only its own sample, not the whole sheet.
        sheet = load_samples(
            args.sheet, check_files=not (args.keep_going or args.on_error == "record")
        )
        bench = _hest_bench_samples(args.hest_bench or [])
        unknown = sorted(set(args.sample) - set(sheet.index) - set(bench))
        if unknown:
            raise HistofuseError(f"samples {unknown} are not in sheet {args.sheet}")
        for s in [s for s in args.sample if s in bench]:  # pre-cut patches, no slide
            _tile_patches(args, s, bench[s], Path(args.out_dir) / f"{s}.parquet")
        args.sample = [s for s in args.sample if s not in bench]
        jobs = [
            (
                s,
                sheet.at[s, "slide"],
                sheet.at[s, "expression"],
                None if sheet.at[s, "mpp"] != sheet.at[s, "mpp"] else sheet.at[s, "mpp"],
                sheet.at[s, "mpp_source"] or "override",
                Path(args.out_dir) / f"{s}.parquet",
            )
            for s in args.sample
        ]
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    else:
        if len(args.sample) != 1 or not (args.slide and args.out):
            raise HistofuseError("tile needs one --sample with --slide and --out")
        jobs = [
            (args.sample[0], args.slide, args.expression, args.mpp, args.mpp_source, Path(args.out))
        ]
    failed = []
    for sample, slide, expression, mpp, mpp_source, out in jobs:
        try:
            table, meta, mask = tile_sample(
                slide, spec, expression or None, mpp_override=mpp, mpp_source=mpp_source
            )
        except HistofuseError as exc:
            if args.on_error == "record":
                from histofuse.slides.failures import write_failure

                print(f"histofuse: error: sample {sample}: {exc} (recorded)", file=sys.stderr)
                stem = out.with_suffix("")
                write_failure(
                    sample,
                    slide,
                    spec,
                    str(exc),
                    out,
                    Path(args.qc) if args.qc else stem.with_suffix(".qc.png"),
                    Path(args.stats) if args.stats else stem.with_suffix(".json"),
                )
                continue
            if not args.keep_going:
                raise HistofuseError(f"sample {sample}: {exc}") from None
            print(f"histofuse: error: sample {sample}: {exc}", file=sys.stderr)
            failed.append(sample)
            continue
        meta["sample"] = sample
        write_tiles(table, meta, out)
        write_qc(table, meta, mask, Path(args.qc) if args.qc else _beside(out, ".qc.png"))
        write_stats(meta, Path(args.stats) if args.stats else _beside(out, ".json"))
        logging.info(
            "%s: %d %s tiles (%d dropped for tissue < %g) of %d px at %.4g µm/px (µm/px from %s)",
            sample,
            len(table),
            spec.mode,
            meta["n_dropped_tissue"],
            meta["min_tissue"],
            spec.patch_px,
            meta["effective_mpp"],
            meta["mpp_source"],
        )
    if failed:
        raise HistofuseError(
            f"{len(failed)} of {len(jobs)} samples failed ({', '.join(failed)}); "
            "the others were tiled"
        )


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this module's verbs to the ``histofuse`` parser."""
    s = sub.add_parser("tile", help="tile coordinates (spots or grid) of one or more samples")
    s.add_argument("--sample", action="append", required=True, help="repeat with --sheet")
    s.add_argument("--sheet", help="sample sheet: tile the given samples into --out-dir")
    s.add_argument("--out-dir", help="folder of {sample}.parquet files (with --sheet)")
    s.add_argument("--slide")
    s.add_argument("--expression", help=".h5ad with obsm['spatial']")
    s.add_argument("--patch-um", type=float, default=112.0)
    s.add_argument("--target-mpp", type=float, default=0.5)
    s.add_argument("--mpp", type=float, default=None, help="µm/px override for this slide")
    s.add_argument(
        "--mpp-source", default="override", help="where --mpp came from (e.g. hest-metadata)"
    )
    s.add_argument("--out", help="tiles parquet (one sample)")
    s.add_argument("--mode", choices=["spots", "grid"], default="spots")
    s.add_argument("--stride-um", type=float, default=None, help="grid step (default patch)")
    s.add_argument("--min-tissue", type=float, default=0.5, help="grid: min tissue fraction")
    s.add_argument(
        "--spot-min-tissue", type=float, default=0.0, help="spots: min tissue fraction (0: all)"
    )
    s.add_argument("--tissue", default="{}", help="tissue detection parameters (JSON)")
    s.add_argument("--qc", help="QC thumbnail (default: beside --out, .qc.png)")
    s.add_argument("--stats", help="counts/timings JSON (default: beside --out, .json)")
    s.add_argument("--keep-going", action="store_true", help="tile the other samples on error")
    s.add_argument("--patches", help="pre-cut patches .h5 (HEST) used instead of a slide")
    s.add_argument(
        "--on-error",
        choices=["stop", "record"],
        default="stop",
        help="record: a sample that cannot be tiled gets an empty tiles table carrying the error "
        "(left out downstream and listed in the report's missing.csv) instead of failing the job",
    )
    s.add_argument(
        "--hest-bench",
        action="append",
        metavar="TASK=FOLDER",
        help="with --sheet: also tile the pre-cut patches of this HEST-Bench task's samples",
    )
    s.set_defaults(func=_tile)
