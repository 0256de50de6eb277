"""Content digests of input files, computed once per version of a file.

A weights file enters every feature store's cache key by its content, not by its path or its
modification time: a file replaced by one with an older mtime (``cp -p``, ``rsync -a``,
``tar x``) still changes the key. Hashing a multi-GB checkpoint at every workflow parse would be
slow, so each digest is kept in a small JSON file under the file's identity: size, mtime,
inode and ctime. Any write to a file sets its ctime to now, and no copy tool can set it back, so
a kept digest is reused only for the very same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from histofuse.atomic import write_json

#: Where the workflow keeps its digests (beside Snakemake's own run metadata).
DIGESTS = ".snakemake/histofuse/digests.json"


def sha256_file(path: str | Path) -> str:
    """Returns the hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _read(cache: Path) -> dict[str, dict]:
    try:
        doc = json.loads(cache.read_text())
    except (OSError, ValueError):  # none yet, or damaged: digests are recomputed
        return {}
    return doc if isinstance(doc, dict) else {}


def cached_sha256(path: str | Path, cache: str | Path = DIGESTS) -> str:
    """The sha256 of a file, from ``cache`` when the file is the same version as when kept.

    Args:
        path: The file.
        cache: The JSON file of kept digests (created when missing; a damaged one is rebuilt).

    Returns:
        The hex sha256 of the file's bytes.

    Raises:
        OSError: If the file cannot be read.
    """
    path, cache = Path(path).resolve(), Path(cache)
    ident = _identity(path)
    kept = _read(cache)
    entry = kept.get(str(path))
    if isinstance(entry, dict) and entry.get("identity") == ident:
        return str(entry["sha256"])
    digest = sha256_file(path)
    if _identity(path) == ident:  # unchanged while hashed: worth keeping
        kept[str(path)] = {"identity": ident, "sha256": digest}
        with contextlib.suppress(OSError):  # a read-only folder: recomputed next time
            write_json(kept, cache, indent=1)
    return digest
