"""The ``report`` verb: summary tables and figures from metrics files."""

from __future__ import annotations

import argparse
import logging


def _report(args: argparse.Namespace) -> None:
    import json

    from histofuse.cli import document
    from histofuse.report.build import build_report, parse_options

    options = json.dumps(document(args.options, "--options"))

    summary = build_report(
        args.metrics,
        args.out,
        predictions=args.predictions or (),
        qc=args.qc or (),
        options=parse_options(options),
        design_files=args.design or (),
    )
    logging.info("report: %d rows", len(summary))


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this module's verbs to the ``histofuse`` parser."""
    s = sub.add_parser("report", help="summary tables from metrics files")
    s.add_argument(
        "--metrics", nargs="+", required=True, help="metrics parquet files of the fit verbs"
    )
    s.add_argument("--out", required=True, help="report folder (tables, figures, index.html)")
    s.add_argument(
        "--predictions", nargs="*", help="predictions files (for the scatter plot; default: none)"
    )
    s.add_argument(
        "--qc", nargs="*", help="tiling QC thumbnails (PNG) shown in index.html (default: none)"
    )
    s.add_argument(
        "--design",
        nargs="*",
        help="sample sheet, feature store manifests and tile stats JSON files, read for the "
        "data-and-design tables (default: none; the tables then hold what the metrics say)",
    )
    s.add_argument(
        "--options",
        default="{}",
        help="the config's `report` section as inline JSON or a .json/.yaml file; a key left out "
        "takes the schema's default (default: %(default)s, all of the schema's `report` defaults)",
    )
    s.set_defaults(func=_report)
