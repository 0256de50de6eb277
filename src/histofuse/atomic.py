"""Atomic file writes: write beside the target, rename over it on success, clean up on failure.

Every file the pipeline produces goes through :func:`atomic_path`, so a reader (or Snakemake)
never sees a half-written file, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from histofuse.errors import HistofuseError


def _refuse_special(path: Path) -> None:
    """Refuses to replace a device, pipe or socket (``/dev/null`` given as an output)."""
    try:
        mode = path.stat().st_mode
    except OSError:  # none yet (or unreadable: the write reports it)
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise HistofuseError(
            f"output {path} is a device, pipe or socket, which a result never replaces; "
            "give a file path"
        )


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    The temporary name keeps the suffix of ``path`` (writers that pick a format from the
    suffix, such as PNG or HDF5, work unchanged). On any exception the temporary file or folder
    is removed and the exception propagates; ``path`` is left as it was.
    """
    path = Path(path)
    _refuse_special(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(text: str, path: str | Path) -> None:
    """Writes text to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj: Any, path: str | Path, **dumps: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (``dumps`` go to :func:`json.dumps`)."""
    options = {"indent": 2, "sort_keys": True, "default": str, **dumps}
    write_text(json.dumps(obj, **options), path)


def write_parquet(
    df: Any, path: str | Path, meta: dict[str, Any] | None = None, key: bytes = b"histofuse"
) -> None:
    """Writes a DataFrame to parquet atomically, with ``meta`` as JSON under ``key``.

    Args:
        df: The table (its index is not written).
        path: Target file.
        meta: Metadata stored in the parquet schema (read back with :func:`read_parquet_meta`).
        key: Schema metadata key.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta is not None:
        extra = {key: json.dumps(meta, default=str).encode()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet_meta(path: str | Path, key: bytes = b"histofuse") -> dict[str, Any]:
    """The metadata :func:`write_parquet` stored under ``key`` (empty when there is none)."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(key)
    return json.loads(raw) if raw else {}
