"""Writing and reading feature stores.

Layout of ``results/features/{encoder}/{shard}.zarr`` (Zarr v3)::

    /                      attrs["histofuse"]: provenance (encoder spec, weights sha256, tiling
                           spec, dtype, cache key, package versions, timings, samples)
    /{sample}/features     (N, D) float16 (default) or float32, uncompressed: chunks of whole
                           rows, up to 16 chunks to a shard file
    /{sample}/coords       (N, 2) int64 patch centres, level-0 px (x, y), uncompressed
    /{sample}/barcodes     (N,) variable-length UTF-8, spot tasks

A whole read of uncompressed features goes straight from the chunk files into the output
array, one copy as with ``np.load``; other layouts (and partial chunks) are read through zarr.

Every group's and array's metadata is also consolidated into the root ``zarr.json``, so a
reader opens a store with one small file read instead of one per sample and array.

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
from dataclasses import dataclass, field
from functools import partial
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


CHUNK_BYTES = 16 << 20
"""Largest feature chunk (whole rows): the unit a row-streaming reader reads."""
SHARD_CHUNKS = 16
"""Chunks per shard file, so a sample of up to 256 MiB of features is one file."""


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
        if sample in self.samples:
            raise ValueError(f"sample {sample!r} written twice to {self.path}")
        n = len(features)
        if len(coords) != n or (barcodes is not None and len(barcodes) != n):
            raise ValueError(f"sample {sample!r}: features, coords and barcodes differ in length")
        group = self._root.create_group(sample)
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
            # read go straight from the file into the output array (see _read_rows_direct).
            compressors=None,
        )[...] = features.astype(self.dtype, copy=False)
        group.create_array(
            "coords", shape=coords.shape, chunks=(max(1, n), 2), dtype="int64", compressors=None
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
            consolidate(self._tmp)
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
    _pieces: list[tuple[Any, int, int]] = field(default_factory=list, repr=False)

    def load(self) -> np.ndarray:
        """Reads all features into one in-memory array (N, D), in index order.

        Faster than ``features.compute()`` for a whole read: every sample is decoded straight
        into its rows of the result, with no dask concatenation or copy of the result. Use the
        dask array for reads larger than memory.
        """
        if not self._pieces:
            return self.features.compute()
        return _read_block(self._pieces, self.features.shape[1], str(self.features.dtype))


@dataclass(frozen=True)
class _RawRows:
    """Where the rows of an uncompressed 2-D feature array lie in its chunk files.

    Attributes:
        folder: The array's folder.
        chunk_key: Maps chunk-grid coordinates to a file name below ``folder``.
        file_rows: Rows per file (the shard, or the chunk where the array is not sharded).
        chunk_rows: Rows per chunk; chunks lie in row order, each at its own offset.
        sharded: Whether each file ends with a Zarr shard index.
        row_bytes: Bytes per row.
        fill_value: Value of rows whose chunk was never written.
    """

    folder: Path
    chunk_key: Any
    file_rows: int
    chunk_rows: int
    sharded: bool
    row_bytes: int
    fill_value: Any


_EMPTY_CHUNK = 2**64 - 1


def _raw_rows(array: Any) -> _RawRows | None:
    """Returns the row layout of a local array stored as raw native-endian rows, else None.

    That is a Zarr v3 array on a local store, 2-D, whose chunks span whole rows and are encoded
    by the ``bytes`` codec alone (little-endian), optionally inside a ``sharding_indexed`` codec
    with its default index (little-endian offsets and sizes, crc32c, at the end of the file).
    """
    import sys

    from zarr.codecs import BytesCodec, Crc32cCodec, Endian, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    def raw(codecs: tuple[Any, ...], *more: type) -> bool:
        first = codecs[0] if codecs else None
        little = isinstance(first, BytesCodec) and first.endian in (None, Endian.little)
        return little and [type(c) for c in codecs[1:]] == list(more)

    meta, store = array.metadata, array.store_path.store
    if (
        sys.byteorder != "little"
        or meta.zarr_format != 3
        or len(array.shape) != 2
        or not isinstance(store, LocalStore)
        or not isinstance(meta.chunk_grid, RegularChunkGrid)
        or not array.dtype.isnative
        or array.dtype.hasobject
    ):
        return None
    (codec,) = meta.codecs if len(meta.codecs) == 1 else (None,)
    file_rows, file_cols = meta.chunk_grid.chunk_shape
    if isinstance(codec, ShardingCodec):
        if not (
            raw(codec.codecs)
            and raw(codec.index_codecs, Crc32cCodec)
            and codec.index_location == ShardingCodecIndexLocation.end
        ):
            return None
        chunk_rows, chunk_cols = codec.chunk_shape
    elif raw(meta.codecs):
        chunk_rows, chunk_cols = file_rows, file_cols
    else:
        return None
    if file_cols != array.shape[1] or chunk_cols != array.shape[1] or file_rows % chunk_rows:
        return None
    return _RawRows(
        folder=Path(store.root) / array.store_path.path,
        chunk_key=meta.encode_chunk_key,
        file_rows=file_rows,
        chunk_rows=chunk_rows,
        sharded=isinstance(codec, ShardingCodec),
        row_bytes=array.shape[1] * array.dtype.itemsize,
        fill_value=meta.fill_value,
    )


def _read_rows_direct(layout: _RawRows, start: int, stop: int, out: np.ndarray) -> None:
    """Reads rows ``[start, stop)`` of an array laid out as ``layout`` straight into ``out``.

    Each chunk's rows are read from its file into their rows of ``out`` with one ``preadv``;
    rows of chunks never written (all fill value) are filled.

    Raises:
        HistofuseError: If a file is shorter than its chunks or its shard index is corrupt.
    """
    from numcodecs import CRC32C

    per_file = layout.file_rows // layout.chunk_rows
    for number in range(start // layout.file_rows, -(-stop // layout.file_rows)):
        first = number * layout.file_rows
        path = layout.folder / layout.chunk_key((number, 0))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # all of its chunks were fill values
            out[max(start, first) - start : min(stop, first + layout.file_rows) - start] = (
                layout.fill_value
            )
            continue
        try:
            size = os.fstat(fd).st_size
            if layout.sharded:
                index_bytes = 16 * per_file + 4
                try:
                    index = CRC32C().decode(os.pread(fd, index_bytes, size - index_bytes))
                except (RuntimeError, ValueError, OSError) as err:
                    raise HistofuseError(
                        f"feature chunk file {path} has a corrupt shard index ({err}); "
                        "re-run its embed job"
                    ) from err
                spans = np.frombuffer(index, dtype="<u8").reshape(per_file, 2).tolist()
            else:  # one chunk: the whole file
                spans = [[0, size]]
            for k, (offset, nbytes) in enumerate(spans):
                row0 = first + k * layout.chunk_rows
                a, b = max(start, row0), min(stop, row0 + layout.chunk_rows)
                if a >= b:
                    continue
                rows = out[a - start : b - start]
                if offset == _EMPTY_CHUNK:
                    rows[...] = layout.fill_value
                    continue
                want = (b - a) * layout.row_bytes
                skip = (a - row0) * layout.row_bytes
                view = memoryview(rows.reshape(-1).view(np.uint8))
                done = 0
                while done < want and skip + done < nbytes:
                    got = os.preadv(fd, [view[done:]], offset + skip + done)
                    if got == 0:
                        break
                    done += got
                if done != want:
                    raise HistofuseError(
                        f"feature chunk file {path} is truncated ({done} of {want} bytes of "
                        f"rows {a}-{b}); re-run its embed job"
                    )
        finally:
            os.close(fd)


def _read_whole_direct(array: Any) -> np.ndarray | None:
    """Reads a whole raw array (see :func:`_raw_rows`) from its files; None for other layouts."""
    layout = _raw_rows(array)
    if layout is None:
        return None
    out = np.empty(array.shape, dtype=array.dtype)
    _read_rows_direct(layout, 0, array.shape[0], out)
    return out


READ_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
"""Threads that read the chunks of one block of raw features."""

READ_BLOCK_BYTES = 256 << 20
"""Largest block of the lazy feature array: the features of consecutive samples of one store
up to this size are read by one task, concurrently, straight into one output array."""


def _read_block(pieces: list[tuple[Any, int, int]], dim: int, dtype: str) -> np.ndarray:
    """Reads row ranges of several feature arrays into one (N, D) array.

    Each piece is ``(zarr AsyncArray, start, stop)``. Raw (uncompressed) arrays are read from
    their files straight into their rows of the output (:func:`_read_rows_direct`), one chunk
    per task on a few threads (reads release the GIL). Others go through zarr: all are awaited
    together in one call into zarr's event loop (one hand-off between threads, not one per
    array), each decoding into its rows of the output.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    rows = [stop - start for _, start, stop in pieces]
    out = np.empty((sum(rows), dim), dtype=dtype)
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(int).tolist()
    nd = default_buffer_prototype().nd_buffer
    direct: list[tuple[_RawRows, int, int, np.ndarray]] = []
    reads = []
    for i, (array, start, stop) in enumerate(pieces):
        layout = _raw_rows(array)
        if layout is None:
            reads.append(
                array.get_orthogonal_selection(
                    (slice(start, stop), slice(None)),
                    out=nd.from_numpy_array(out[offsets[i] : offsets[i + 1]]),
                )
            )
            continue
        a = start
        while a < stop:  # one task per chunk
            b = min(stop, (a // layout.chunk_rows + 1) * layout.chunk_rows)
            direct.append((layout, a, b, out[offsets[i] + a - start : offsets[i] + b - start]))
            a = b
    workers = min(len(direct), READ_THREADS)
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="histofuse-read") as pool:
            for _ in pool.map(lambda task: _read_rows_direct(*task), direct):
                pass
    else:
        for task in direct:
            _read_rows_direct(*task)
    if reads:

        async def gather() -> None:
            await asyncio.gather(*reads)

        sync(gather())
    return out


def _blocks(
    arrays: list[Any], max_bytes: int = READ_BLOCK_BYTES
) -> list[list[tuple[Any, int, int]]]:
    """Groups the feature arrays of one store into read blocks of at most ``max_bytes``.

    Consecutive samples share a block; a sample larger than a block is split along rows at
    chunk boundaries.
    """
    blocks: list[list[tuple[Any, int, int]]] = []
    cur: list[tuple[Any, int, int]] = []
    size = 0
    for array in arrays:
        n, row_bytes = array.shape[0], max(1, array.nbytes // max(1, array.shape[0]))
        step = max(array.chunks[0], max_bytes // row_bytes // array.chunks[0] * array.chunks[0])
        for start in range(0, n, step):
            stop = min(n, start + step)
            nbytes = (stop - start) * row_bytes
            if cur and size + nbytes > max_bytes:
                blocks.append(cur)
                cur, size = [], 0
            cur.append((array, start, stop))
            size += nbytes
    if cur:
        blocks.append(cur)
    return blocks


async def _open_samples(store: Path, samples: list[str]) -> tuple[Any, list[tuple[Any, ...]]]:
    """Opens a store and, concurrently, every sample's arrays; reads coords and barcodes."""
    import asyncio

    import zarr.api.asynchronous as za

    root = await za.open_group(str(store), mode="r")

    async def one(sample: str) -> tuple[Any, ...]:
        group = await root.getitem(sample)
        features, coords = await asyncio.gather(group.getitem("features"), group.getitem("coords"))
        barcodes = None
        if await group.contains("barcodes"):
            barcodes = await (await group.getitem("barcodes")).getitem(...)
        xy = _read_whole_direct(coords)  # a small local file: read in place, no thread hop
        return features, (await coords.getitem(...)) if xy is None else xy, barcodes

    return root, list(await asyncio.gather(*(one(s) for s in samples)))


def open_features(
    stores: list[str | Path],
    cache_key: str | None = None,
    block_bytes: int = READ_BLOCK_BYTES,
) -> FeatureTable:
    """Opens all shards of one encoder as one lazily concatenated dask array.

    The metadata of all samples is opened concurrently (from the consolidated root metadata
    where present); the features stay on disk until computed. The dask array has one block
    per group of consecutive samples of a store (see :data:`READ_BLOCK_BYTES`); a block's
    samples are read concurrently into one array, so a whole read costs little more than
    reading the bytes.

    Args:
        stores: Store paths of one encoder.
        cache_key: If given, every store must carry this cache key.
        block_bytes: Largest block of the dask array (at least one storage chunk). Readers
            that stream rows under a memory budget ask for small blocks, since reading any row
            of a block reads all of it.

    Raises:
        HistofuseError: If a store is unfinished, or stores disagree on their cache key, or a
            store's key differs from ``cache_key``.
    """
    import hashlib

    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph
    from zarr.core.sync import sync

    parts, samples, barcodes, coords, first = [], [], [], [], None
    pieces_all: list[tuple[Any, int, int]] = []
    for store in map(Path, stores):
        manifest = read_manifest(store)
        names = list(manifest["samples"])
        root, opened = sync(_open_samples(store, names))
        prov = dict(root.attrs.get(ATTRS_KEY, {}))
        if prov.get("cache_key") != manifest["cache_key"]:
            raise HistofuseError(f"feature store {store} disagrees with its manifest; re-embed it")
        want = cache_key or (first or {}).get("cache_key")
        if want is not None and prov["cache_key"] != want:
            raise HistofuseError(
                f"feature store {store} has cache key {prov['cache_key']}, expected {want}: it was "
                "made with another encoder, weights, pooling or tiling; re-run its embed job"
            )
        first = first or prov
        arrays = [features for features, _, _ in opened]
        dim, dtype = arrays[0].shape[1], arrays[0].dtype
        blocks = _blocks(arrays, block_bytes)
        if not blocks:  # only empty samples
            parts.append(da.zeros((0, dim), dtype=dtype))
        else:
            key = (
                "histofuse-features-"
                + hashlib.sha256(
                    json.dumps([str(store.resolve()), prov["cache_key"], names]).encode()
                ).hexdigest()[:16]
            )
            # Each task is a partial, so dask does not walk the zarr arrays it holds.
            graph = {
                (key, b, 0): (partial(_read_block, pieces, dim, str(dtype)),)
                for b, pieces in enumerate(blocks)
            }
            rows = tuple(sum(stop - start for _, start, stop in pieces) for pieces in blocks)
            layer = HighLevelGraph.from_collections(key, graph)
            parts.append(da.Array(layer, key, (rows, (dim,)), dtype))
        pieces_all.extend(piece for block in blocks for piece in block)
        samples.append(np.repeat(np.asarray(names, dtype=object), [len(xy) for _, xy, _ in opened]))
        coords.extend(np.asarray(xy, dtype=np.int64).reshape(-1, 2) for _, xy, _ in opened)
        barcodes.extend(
            np.asarray(bc, dtype=object) if bc is not None else np.full(len(xy), "", object)
            for _, xy, bc in opened
        )
    if not parts:
        raise HistofuseError("no feature stores given")
    xy = np.concatenate(coords)
    index = pd.DataFrame(
        {
            "sample": np.concatenate(samples),
            "barcode": np.concatenate(barcodes),
            "x": xy[:, 0],
            "y": xy[:, 1],
        }
    )
    return FeatureTable(
        features=parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0),
        index=index,
        provenance=first,
        _pieces=pieces_all,
    )
