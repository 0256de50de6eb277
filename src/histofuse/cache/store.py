"""Writing and reading feature stores.

Layout of ``results/features/{encoder}/{shard}.zarr`` (Zarr v3)::

    /                      attrs["histofuse"]: provenance (encoder spec, weights sha256, tiling
                           spec, dtype, cache key, package versions, timings, samples)
    /{sample}/features     (N, D) float16 (default) or float32, zstd-compressed
    /{sample}/coords       (N, 2) int64 patch centres, level-0 px (x, y)
    /{sample}/barcodes     (N,) variable-length UTF-8, spot tasks

A store is written under a temporary name in the same folder and renamed into place only once
every sample is written; then the manifest ``{shard}.manifest.json`` is written (atomically) as
the last step. Readers accept a store only if its manifest exists and agrees with the store's
provenance, so a store from a killed job is never read as complete.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

FORMAT_VERSION = 1
ATTRS_KEY = "histofuse"


def manifest_path(store: str | Path) -> Path:
    """Returns the manifest path of a store (``x.zarr`` → ``x.manifest.json``)."""
    store = Path(store)
    return store.with_name(store.name.removesuffix(".zarr") + ".manifest.json")


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """Writes JSON to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_failed(path: Path, exc: OSError) -> HistofuseError:
    """A user-facing error for a store that could not be written."""
    reason = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "free disk space",
        errno.EDQUOT: "free disk space (quota exceeded)",
        errno.EFBIG: "raise the file size limit (ulimit -f) or free disk space",
        errno.EROFS: "write the results to a writable file system",
        errno.EACCES: "make the results folder writable",
        errno.EPERM: "make the results folder writable",
    }.get(exc.errno, "check the results folder")
    return HistofuseError(
        f"could not write feature store {path}: {reason}; nothing was kept; {hint} and re-run"
    )


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
        self._lock: Any = None

    def __enter__(self) -> FeatureStoreWriter:
        import zarr

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
            # Leftovers of killed jobs for this store: never read (no manifest), removed here.
            # Safe under the lock: no other job is writing this store.
            for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            self._root = zarr.open_group(str(self._tmp), mode="w", zarr_format=3)
        except OSError as exc:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._release_lock()
            raise _write_failed(self.path, exc) from exc
        except BaseException:
            self._release_lock()
            raise
        return self

    def _acquire_lock(self) -> None:
        """Takes the store's exclusive lock, or raises if another job holds it.

        The lock file is removed when the write ends; a job that locked a file already removed
        (it opened the file just before) sees that the path no longer names it and tries again.
        """
        import fcntl

        lock = self.path.with_name(f".{self.path.name}.lock")
        for _ in range(100):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise HistofuseError(
                    f"feature store {self.path} is being written by another job (pid {holder}, "
                    f"lock {lock.name}); this job stops and leaves it alone; re-run once that "
                    "job ends"
                ) from None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._lock = (fd, lock)
                return
            os.close(fd)
        raise HistofuseError(f"could not lock feature store {self.path} ({lock}); re-run")

    def _release_lock(self) -> None:
        if self._lock is not None:
            fd, lock = self._lock
            lock.unlink(missing_ok=True)  # while still held, so no one else owns this path
            os.close(fd)  # closing the descriptor releases the flock
            self._lock = None

    def add(
        self,
        sample: str,
        features: np.ndarray,
        coords: np.ndarray,
        barcodes: np.ndarray | None = None,
    ) -> None:
        """Adds one sample's features (N, D), coords (N, 2) and optional barcodes (N,)."""
        import zarr

        if sample in self.samples:
            raise ValueError(f"sample {sample!r} written twice to {self.path}")
        n = len(features)
        if len(coords) != n or (barcodes is not None and len(barcodes) != n):
            raise ValueError(f"sample {sample!r}: features, coords and barcodes differ in length")
        group = self._root.create_group(sample)
        dim = features.shape[1] if features.ndim == 2 else 0
        # Whole-array reads dominate (heads read all features of a sample), so chunks are large.
        rows = max(1, min(n, max(1, (16 << 20) // max(1, dim * self.dtype.itemsize))))
        codec = zarr.codecs.ZstdCodec(level=3)
        group.create_array(
            "features",
            shape=features.shape,
            chunks=(rows, max(dim, 1)),
            dtype=self.dtype,
            # Float features barely compress (random mantissas); storing them raw makes a whole
            # read as fast as a plain file read.
            compressors=None,
        )[...] = features.astype(self.dtype, copy=False)
        group.create_array(
            "coords", shape=coords.shape, chunks=(max(1, n), 2), dtype="int64", compressors=codec
        )[...] = np.asarray(coords, dtype=np.int64)
        if barcodes is not None:
            group.create_array("barcodes", data=np.asarray(barcodes, dtype=np.dtypes.StringDType()))
        self.samples[sample] = n

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._finish(exc_type, exc)
        finally:
            self._release_lock()

    def _finish(self, exc_type, exc) -> None:
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise _write_failed(self.path, exc) from exc
            return
        try:
            self.provenance.update(
                format_version=FORMAT_VERSION, dtype=str(self.dtype), samples=self.samples
            )
            self._root.attrs[ATTRS_KEY] = json.loads(json.dumps(self.provenance, default=str))
            if self.path.exists():
                # The old manifest goes first, so it never describes the store being replaced.
                manifest_path(self.path).unlink(missing_ok=True)
                shutil.rmtree(self.path)
            os.replace(self._tmp, self.path)
            write_json_atomic(
                {
                    "store": self.path.name,
                    "cache_key": self.provenance["cache_key"],
                    "samples": self.samples,
                    "n_tiles": sum(self.samples.values()),
                    "format_version": FORMAT_VERSION,
                },
                manifest_path(self.path),
            )
        except OSError as err:
            if not self._tmp.exists():  # renamed into place, but its manifest failed
                shutil.rmtree(self.path, ignore_errors=True)
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise _write_failed(self.path, err) from err
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise


def read_manifest(store: str | Path) -> dict[str, Any]:
    """Returns a finished store's manifest.

    Raises:
        HistofuseError: If the store or its manifest is missing (an unfinished store).
    """
    store = Path(store)
    man = manifest_path(store)
    if not store.is_dir() or not man.is_file():
        raise HistofuseError(
            f"feature store {store} is missing or unfinished (no {man.name}); re-run its embed job"
        )
    return json.loads(man.read_text())


def read_provenance(store: str | Path) -> dict[str, Any]:
    """Returns the provenance attributes of a finished store."""
    import zarr

    read_manifest(store)
    return dict(zarr.open_group(str(store), mode="r").attrs[ATTRS_KEY])


@dataclass
class FeatureTable:
    """Features of many samples as one lazy array plus an index.

    Attributes:
        features: A dask array (N, D), concatenated over samples in index order.
        index: One row per tile: ``sample``, ``barcode`` (or empty), ``x``, ``y``.
        provenance: The provenance of the first store (all stores share its cache key).
    """

    features: Any
    index: pd.DataFrame
    provenance: dict[str, Any]


def open_features(stores: list[str | Path], cache_key: str | None = None) -> FeatureTable:
    """Opens all shards of one encoder as one lazily concatenated dask array.

    Args:
        stores: Store paths of one encoder.
        cache_key: If given, every store must carry this cache key.

    Raises:
        HistofuseError: If a store is unfinished, or stores disagree on their cache key, or a
            store's key differs from ``cache_key``.
    """
    import dask.array as da
    import zarr

    parts, index, first = [], [], None
    for store in stores:
        manifest = read_manifest(store)
        root = zarr.open_group(str(store), mode="r")
        prov = dict(root.attrs[ATTRS_KEY])
        if prov.get("cache_key") != manifest["cache_key"]:
            raise HistofuseError(f"feature store {store} disagrees with its manifest; re-embed it")
        want = cache_key or (first or {}).get("cache_key")
        if want is not None and prov["cache_key"] != want:
            raise HistofuseError(
                f"feature store {store} has cache key {prov['cache_key']}, expected {want}: it was "
                "made with another encoder, weights, pooling or tiling; re-run its embed job"
            )
        first = first or prov
        for sample in manifest["samples"]:
            group = root[sample]
            parts.append(da.from_zarr(group["features"]))
            coords = group["coords"][...]
            barcodes = (
                np.asarray(group["barcodes"][...], dtype=object)
                if "barcodes" in group
                else np.full(len(coords), "", dtype=object)
            )
            index.append(
                pd.DataFrame(
                    {"sample": sample, "barcode": barcodes, "x": coords[:, 0], "y": coords[:, 1]}
                )
            )
    if not parts:
        raise HistofuseError("no feature stores given")
    return FeatureTable(
        features=da.concatenate(parts, axis=0),
        index=pd.concat(index, ignore_index=True),
        provenance=first,
    )
