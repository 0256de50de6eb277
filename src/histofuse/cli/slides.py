"""The ``slides`` verb: the slides page (tiles, µm/px and its source per slide)."""

from __future__ import annotations

import argparse


def _slides(args: argparse.Namespace) -> None:
    from histofuse.report.slides import write_slides_page

    write_slides_page(args.stats, args.out)


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this module's verbs to the ``histofuse`` parser."""
    s = sub.add_parser(
        "slides",
        help="the slides page of a study: slides.csv and slides.html (tiles, µm/px, QC)",
    )
    s.add_argument(
        "--stats", nargs="+", required=True, help="tile stats files ({sample}.json), one per slide"
    )
    s.add_argument("--out", required=True, help="the report folder")
    s.set_defaults(func=_slides)
