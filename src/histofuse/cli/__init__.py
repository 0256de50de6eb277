"""The ``histofuse`` command line: one verb per pipeline step.

Snakemake rules call these verbs; each is also usable on its own. Heavy libraries are imported
inside the verbs, so ``histofuse --help`` and Snakemake's parse stay fast. Errors a user can
cause are printed as one line (``histofuse: error: …``) with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from histofuse import __version__
from histofuse.errors import HistofuseError


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of the ``histofuse`` command."""
    from histofuse.cli import demo, embed, fit, report, tile

    p = argparse.ArgumentParser(prog="histofuse", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"histofuse {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in (demo, tile, embed, fit, report):
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``histofuse`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except HistofuseError as exc:
        print(f"histofuse: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
