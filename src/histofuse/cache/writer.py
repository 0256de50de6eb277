"""Writing a feature store: under a temporary name, behind a lock, renamed into place at the end.

A store is written under a temporary name in the same folder and renamed into place only once
every sample is written; then its manifest is written (atomically, see
:mod:`histofuse.cache.manifest`) as the last step, so a store from a killed job is never read
as complete.

A writer holds an exclusive lock (``.{shard}.zarr.lock`` beside the store, removed at the end)
from start to finish: a second job writing the same store at the same time stops with a clear
error and leaves the first one's work alone. A write that fails (disk full, read-only folder)
removes its temporary store and raises :class:`HistofuseError` naming the store and the
system's reason.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from histofuse.cache.chunks import ALL_CHUNKS
from histofuse.cache.manifest import (
    ATTRS_KEY,
    FORMAT_VERSION,
    manifest_path,
    write_manifest,
)
from histofuse.errors import HistofuseError

CHUNK_BYTES = 16 << 20
"""Largest feature chunk (whole rows): the unit a row-streaming reader reads."""
SHARD_CHUNKS = 16
"""Chunks per shard file, so a sample of up to 256 MiB of features is one file."""


def _checked() -> dict[str, Any]:
    """How every array is written: a crc32c after each chunk's bytes, every chunk on disk.

    Every chunk is written even when all fill values, so a missing chunk file reads as damage,
    not as zeros; nothing is compressed (see :mod:`histofuse.cache.chunks`).
    """
    from zarr.codecs import Crc32cCodec

    return {
        "compressors": [Crc32cCodec()],
        "config": {"write_empty_chunks": True},
        "attributes": {ALL_CHUNKS: True},
    }


_HINTS = {
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free disk space (quota exceeded)",
    errno.EFBIG: "raise the file size limit (ulimit -f) or free disk space",
    errno.EROFS: "write the results to a writable file system",
    errno.EACCES: "make the results folder writable",
    errno.EPERM: "make the results folder writable",
}


def _write_failed(path: Path, exc: OSError) -> HistofuseError:
    """A user-facing error for a store that could not be written."""
    reason = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno, "check the results folder")
    return HistofuseError(
        f"could not write feature store {path}: {reason}; nothing was kept; {hint} and re-run"
    )


def consolidate(store: str | Path) -> None:
    """Consolidates all metadata of a store into its root ``zarr.json``.

    Consolidated metadata is a zarr-python extension to Zarr v3 (readers without it fall back
    to the per-node metadata files, which are still written); its warning saying so is silenced.
    """
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(store))


class StoreLock:
    """The exclusive lock of one store: ``.{name}.lock`` beside it, holding the writer's pid.

    The lock file is removed when the write ends; a job that locked a file already removed
    (it opened the file just before) sees that the path no longer names it and tries again.

    Args:
        store: The store path.
    """

    def __init__(self, store: Path) -> None:
        self.store = store
        self.path = store.with_name(f".{store.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock, or raises if another job holds it.

        Raises:
            HistofuseError: If another job holds the lock, or it could not be taken.
        """
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self._flock_or_refuse(fd)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return
            os.close(fd)
        raise HistofuseError(f"could not lock feature store {self.store} ({self.path}); re-run")

    def _flock_or_refuse(self, fd: int) -> None:
        """Locks ``fd`` without waiting; a lock held elsewhere is an error naming its holder."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise HistofuseError(
                f"feature store {self.store} is being written by another job (pid {holder}, "
                f"lock {self.path.name}); this job stops and leaves it alone; re-run once that "
                "job ends"
            ) from None

    def release(self) -> None:
        """Removes the lock file and releases the lock (a no-op when not held)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still held, so no one else owns this path
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class FeatureStoreWriter:
    """Writes one feature store atomically.

    Use as a context manager: samples are added with :meth:`add`; on a clean exit the store is
    renamed into place and the manifest written; on an exception the temporary store is removed
    and nothing is left at the final path.

    Args:
        path: Final store path (``….zarr``).
        provenance: JSON-serialisable provenance; must contain ``cache_key``.
        dtype: Feature dtype on disk (``float16`` or ``float32``).
    """

    def __init__(
        self, path: str | Path, provenance: dict[str, Any], dtype: str = "float16"
    ) -> None:
        if "cache_key" not in provenance:
            raise ValueError("provenance must contain a cache_key")
        self.path = Path(path)
        self.provenance = dict(provenance)
        self.dtype = np.dtype(dtype)
        self.samples: dict[str, int] = {}
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        self._root = None
        self._lock = StoreLock(self.path)

    def __enter__(self) -> FeatureStoreWriter:
        import zarr

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            # Leftovers of killed jobs for this store: never read (no manifest), removed here.
            # Safe under the lock: no other job is writing this store.
            for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            self._root = zarr.open_group(str(self._tmp), mode="w", zarr_format=3)
        except OSError as exc:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._lock.release()
            raise _write_failed(self.path, exc) from exc
        except BaseException:
            self._lock.release()
            raise
        return self

    def add(
        self,
        sample: str,
        features: np.ndarray,
        coords: np.ndarray,
        barcodes: np.ndarray | None = None,
    ) -> None:
        """Adds one sample's features (N, D), coords (N, 2) and optional barcodes (N,)."""
        if sample in self.samples:
            raise ValueError(f"sample {sample!r} written twice to {self.path}")
        n = len(features)
        if len(coords) != n or (barcodes is not None and len(barcodes) != n):
            raise ValueError(f"sample {sample!r}: features, coords and barcodes differ in length")
        group = self._root.create_group(sample)
        checked = _checked()
        dim = features.shape[1] if features.ndim == 2 else 0
        # Whole-array reads dominate (heads read all features of a sample): chunks of whole rows
        # of up to CHUNK_BYTES, grouped into shard files of up to SHARD_CHUNKS chunks, so a
        # sample is one file on disk while a reader that streams rows reads single chunks.
        rows = max(1, min(n, CHUNK_BYTES // max(1, dim * self.dtype.itemsize)))
        group.create_array(
            "features",
            shape=features.shape,
            chunks=(rows, max(dim, 1)),
            shards=(rows * min(SHARD_CHUNKS, max(1, -(-n // rows))), max(dim, 1)),
            dtype=self.dtype,
            # Float features barely compress (random mantissas); storing them raw lets a whole
            # read go straight from the file into the output array (see cache.chunks).
            **checked,
        )[...] = features.astype(self.dtype, copy=False)
        group.create_array(
            "coords", shape=coords.shape, chunks=(max(1, n), 2), dtype="int64", **checked
        )[...] = np.asarray(coords, dtype=np.int64)
        if barcodes is not None:
            text = np.asarray(barcodes, dtype=np.dtypes.StringDType())
            group.create_array(
                "barcodes", shape=text.shape, chunks=(max(1, n),), dtype=text.dtype, **checked
            )[...] = text
        self.samples[sample] = n

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._finish(exc_type, exc)
        finally:
            self._lock.release()

    def _finish(self, exc_type, exc) -> None:
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise _write_failed(self.path, exc) from exc
            return
        try:
            self._publish()
        except OSError as err:
            if not self._tmp.exists():  # renamed into place, but its manifest failed
                shutil.rmtree(self.path, ignore_errors=True)
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise _write_failed(self.path, err) from err
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def _publish(self) -> None:
        """Records the provenance, renames the finished store into place, writes its manifest."""
        self.provenance.update(
            format_version=FORMAT_VERSION, dtype=str(self.dtype), samples=self.samples
        )
        self._root.attrs[ATTRS_KEY] = json.loads(json.dumps(self.provenance, default=str))
        consolidate(self._tmp)
        if self.path.exists():
            # The old manifest goes first, so it never describes the store being replaced.
            manifest_path(self.path).unlink(missing_ok=True)
            shutil.rmtree(self.path)
        os.replace(self._tmp, self.path)
        write_manifest(self.path, self.provenance["cache_key"], self.samples)
