"""User-facing errors.

Anything a user can cause (a bad config key, a missing file, a slide without µm/px) raises
:class:`HistofuseError` with one message that names the file or key and says how to fix it. The
CLI prints that message alone, without a traceback, and exits with status 2.

:func:`user_message` is the CLI's one place that also recognises failures the user's machine or
paths cause without a HistofuseError being raised for them: a full disk or quota anywhere (an
``OSError``, also from pyarrow, PIL, zarr or numcodecs, possibly wrapped in another exception), a
path that cannot be written or read, and a parquet file that is not parquet. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Sequence

_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_DISK_FULL_TEXT = re.compile(r"no space left on device|disk quota exceeded", re.IGNORECASE)

# errno → what to do; the message is "<strerror>: <path>; <hint>".
_PATH_HINTS = {
    errno.ENOENT: "check the path: an input that does not exist, or an output's missing folder",
    errno.EACCES: "make it readable (an input) or writable (an output), or choose another path",
    errno.EPERM: "make it readable (an input) or writable (an output), or choose another path",
    errno.EROFS: "write the results to a writable file system",
    errno.EISDIR: "a folder stands where a file is expected; give a file path",
    errno.ENOTDIR: "a file stands where a folder is expected in this path",
    errno.EEXIST: "remove it or choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ELOOP: "fix the symbolic links in this path",
    errno.EFBIG: "raise the file size limit (ulimit -f) or write to another file system",
}

# The temporary name histofuse.atomic writes beside an output: ".{stem}.tmp-{8 hex}{suffix}".
_ATOMIC_TMP = re.compile(r"(^|/)\.([^/]*)\.tmp-[0-9a-f]{8}([^/]*)$")
_QUOTED_PATH = re.compile(r"'([^']+)'")


class HistofuseError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


def one_line(text: str) -> str:
    """The text with its line breaks (and the blanks around them) turned into single spaces."""
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts (a wrapped OSError is found this way)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 20:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _shown_path(path: object) -> str:
    """The path to name: the output itself rather than the temporary file written beside it."""
    return _ATOMIC_TMP.sub(r"\1\2\3", str(path))


def _path_of(exc: BaseException) -> str | None:
    """The file an exception names: its ``filename``, or the first quoted path in its text."""
    name = getattr(exc, "filename", None)
    if name is None:
        found = _QUOTED_PATH.search(str(exc))
        name = found.group(1) if found else None
    return _shown_path(name) if name is not None else None


def _full_outputs(outputs: list[str]) -> list[str]:
    """The outputs whose file system has no free block left (all of them if none is found)."""
    full = []
    for out in outputs:
        folder = os.path.abspath(out)
        while not os.path.isdir(folder) and folder != os.path.dirname(folder):
            folder = os.path.dirname(folder)
        with contextlib.suppress(OSError):
            if os.statvfs(folder).f_bavail == 0:
                full.append(out)
    return full or list(outputs)


def _disk_full(chain: list[BaseException], outputs: list[str]) -> str | None:
    """The one-line message of a full disk or quota anywhere in the chain, else None."""
    for exc in chain:
        code = getattr(exc, "errno", None)
        found = _DISK_FULL_TEXT.search(str(exc))
        if code in _DISK_FULL or found:
            what = _DISK_FULL.get(code) or found.group(0).lower()
            named = [_shown_path(e.filename) for e in chain if getattr(e, "filename", None)]
            paths = named or _full_outputs(outputs)
            where = f" while writing {', '.join(paths)}" if paths else ""
            return (
                f"{what}{where}: free space on that disk, or point results/ at a larger one "
                "(run from another folder or with snakemake --directory), then re-run"
            )
    return None


def _bad_path(exc: OSError) -> str | None:
    """The one-line message of an OSError a path causes (missing, not writable, ...), else None."""
    hint = _PATH_HINTS.get(exc.errno)
    if hint is None:
        return None
    path = _path_of(exc)
    if exc.filename2 is not None:  # a rename: name the output it was meant to become
        path = _shown_path(exc.filename2)
    reason = os.strerror(exc.errno)  # pyarrow's strerror holds its whole message
    return f"{reason}: {path}; {hint}" if path else f"{reason}; {hint}"


def _bad_parquet(exc: BaseException) -> str | None:
    """The one-line message of a parquet file that pyarrow cannot open, else None."""
    text = one_line(str(exc))
    if "Parquet magic bytes not found" not in text and "Could not open Parquet" not in text:
        return None
    path = _path_of(exc)
    where = f"file {path}" if path else "a file"
    return (
        f"{where} is not a readable parquet file (truncated, corrupt or another format); "
        "re-run the step that wrote it"
    )


def user_message(exc: BaseException, outputs: Sequence[str] = ()) -> str | None:
    """The one-line message of a failure the user can fix, or None for a bug.

    Args:
        exc: An exception that ended a command.
        outputs: The command's output paths; a full disk names those on a full file system
            when the exception names no file (pyarrow's and zarr's do not).

    Returns:
        The message to print after ``histofuse: error:``, or None to keep the traceback.
    """
    chain = _chain(exc)
    message = _disk_full(chain, list(outputs))
    if message is None and isinstance(exc, HistofuseError):
        message = str(exc)
    if message is None and isinstance(exc, OSError):
        message = _bad_path(exc)
    if message is None:
        message = _bad_parquet(exc)
    return one_line(message) if message is not None else None
