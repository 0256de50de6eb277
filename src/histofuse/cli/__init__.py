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
from typing import Any, NoReturn

from histofuse import __version__
from histofuse.errors import HistofuseError, one_line, user_message


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``histofuse: error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        """Prints the message as one line and exits with status 2."""
        fail(f"{self.prog}: {message} (see `{self.prog} --help`)")


def fail(message: str) -> NoReturn:
    """Prints ``histofuse: error: MESSAGE`` as one line and exits with status 2."""
    print(f"histofuse: error: {one_line(message)}", file=sys.stderr)
    sys.exit(2)


def document(value: str, flag: str) -> dict[str, Any]:
    """A flag's settings document (inline JSON or a .json/.yaml file), as settings.load_document.

    Raises:
        HistofuseError: Naming the flag, for a document that is not JSON, YAML or a mapping.
    """
    from histofuse.settings import load_document

    try:
        return load_document(value)
    except HistofuseError as exc:
        raise HistofuseError(f"{flag}: {exc}") from None


_OUTPUT_FLAGS = ("out", "out_dir", "qc", "stats", "metrics", "predictions")


def _outputs(args: argparse.Namespace) -> list[str]:
    """The output paths given to a verb (a full disk names the ones on a full file system)."""
    return [str(v) for f in _OUTPUT_FLAGS if (v := getattr(args, f, None)) is not None]


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of the ``histofuse`` command."""
    from histofuse.cli import demo, embed, fit, init, report, slides, tile

    p = _Parser(prog="histofuse", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"histofuse {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (default: info)")
    sub = p.add_subparsers(
        dest="verb", required=True, metavar="VERB", help="a step (VERB --help for its flags)"
    )
    for module in (init, demo, tile, embed, fit, report, slides):
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``histofuse`` command; returns the exit status.

    A failure the user can fix (errors.user_message: a HistofuseError, a full disk, a path that
    cannot be read or written) ends as one ``histofuse: error:`` line with status 2; a usage
    error too. Anything else is a bug and keeps its traceback.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except Exception as exc:
        message = user_message(exc, _outputs(args))
        if message is None:
            raise
        print(f"histofuse: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
