"""Reading feature rows straight from a store's chunk files.

A whole read of uncompressed features goes straight from the chunk files into the output
array, one copy as with ``np.load``; other layouts (and partial chunks) are read through zarr.

Arrays written by :class:`~histofuse.cache.FeatureStoreWriter` have every chunk written (the
attribute :data:`ALL_CHUNKS`) and a crc32c checksum after each chunk's bytes (zarr's ``crc32c``
codec): a chunk file that is missing, or whose checksum differs, is an error naming the store,
the sample, the array and the file, never rows of fill values or rows in the wrong place.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histofuse.errors import HistofuseError

READ_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
"""Threads that read the chunks of one block of raw features."""

_EMPTY_CHUNK = 2**64 - 1
ALL_CHUNKS = "all_chunks_written"
"""Array attribute set by the writer: every chunk is on disk, so a missing one is damage."""
CRC_PIECE = 256 << 10
"""Bytes read at once when a chunk's checksum is verified, each checked while still in the CPU's
(per-core) level-2 cache: a larger piece is checked from slower memory, a smaller one costs more
calls."""


@dataclass(frozen=True)
class RawRows:
    """Where the rows of an uncompressed 2-D feature array lie in its chunk files.

    Attributes:
        store: The store (its root folder).
        name: The array's path in the store (``{sample}/{array}``).
        folder: The array's folder.
        chunk_key: Maps chunk-grid coordinates to a file name below ``folder``.
        file_rows: Rows per file (the shard, or the chunk where the array is not sharded).
        chunk_rows: Rows per chunk; chunks lie in row order, each at its own offset.
        sharded: Whether each file ends with a Zarr shard index.
        row_bytes: Bytes per row.
        fill_value: Value of rows whose chunk was never written.
        checksum: Whether each chunk ends with its crc32c (4 bytes, little-endian).
        strict: Whether every chunk was written (a missing one is an error).
    """

    store: Path
    name: str
    folder: Path
    chunk_key: Any
    file_rows: int
    chunk_rows: int
    sharded: bool
    row_bytes: int
    fill_value: Any
    checksum: bool = False
    strict: bool = False

    def damaged(self, path: Path, what: str) -> HistofuseError:
        """The error for a damaged chunk file ``path`` of this array (``what`` says how)."""
        return damaged(self.store, self.name, f"chunk file {path} {what}")


def damaged(store: Path, name: str, what: str) -> HistofuseError:
    """The error for damage ``what`` to the array ``name`` (``{sample}/{array}``) of a store.

    It names the store, the sample and the array, and the command that rebuilds the store.
    """
    from histofuse.cache.manifest import rebuild_hint

    sample, _, array = name.rpartition("/")
    return HistofuseError(
        f"feature store {store}: sample {sample or '?'}, array {array}: {what}; "
        f"{rebuild_hint(store)}"
    )


def check_chunk_files(array: Any) -> None:
    """Checks that every chunk file of a local array whose chunks were all written exists.

    For arrays read through zarr, which would read a missing chunk as fill values.

    Raises:
        HistofuseError: Naming the store, sample, array and the first missing file.
    """
    from zarr.storage import LocalStore

    meta, store = array.metadata, array.store_path.store
    if not (isinstance(store, LocalStore) and meta.attributes.get(ALL_CHUNKS)):
        return
    root = Path(store.root)
    for coords in meta.chunk_grid.all_chunk_coords(array.shape):
        path = root / array.store_path.path / meta.encode_chunk_key(coords)
        if not path.is_file():
            raise damaged(root, array.store_path.path, f"chunk file {path} is missing")


def _raw_codecs(codecs: tuple[Any, ...], *more: type) -> bool:
    """Whether ``codecs`` are the little-endian ``bytes`` codec followed by codecs of ``more``."""
    from zarr.codecs import BytesCodec, Endian

    first = codecs[0] if codecs else None
    little = isinstance(first, BytesCodec) and first.endian in (None, Endian.little)
    return little and [type(c) for c in codecs[1:]] == list(more)


def _raw_chunk_codecs(codecs: tuple[Any, ...]) -> bool | None:
    """Whether raw chunks carry a crc32c (``bytes`` then ``crc32c``); None if not raw at all."""
    from zarr.codecs import Crc32cCodec

    if _raw_codecs(codecs):
        return False
    return True if _raw_codecs(codecs, Crc32cCodec) else None


def _plain_local_2d(array: Any) -> bool:
    """Whether an array is a native-endian 2-D Zarr v3 array with a regular grid, on local disk."""
    import sys

    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    meta, store = array.metadata, array.store_path.store
    return (
        sys.byteorder == "little"
        and meta.zarr_format == 3
        and len(array.shape) == 2
        and isinstance(store, LocalStore)
        and isinstance(meta.chunk_grid, RegularChunkGrid)
        and array.dtype.isnative
        and not array.dtype.hasobject
    )


def raw_rows(array: Any) -> RawRows | None:
    """Returns the row layout of a local array stored as raw native-endian rows, else None.

    That is a Zarr v3 array on a local store, 2-D, whose chunks span whole rows and are encoded
    by the ``bytes`` codec (little-endian), alone or followed by ``crc32c``, optionally inside a
    ``sharding_indexed`` codec with its default index (little-endian offsets and sizes, crc32c,
    at the end of the file).
    """
    from zarr.codecs import Crc32cCodec, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation

    if not _plain_local_2d(array):
        return None
    meta = array.metadata
    (codec,) = meta.codecs if len(meta.codecs) == 1 else (None,)
    file_rows, file_cols = meta.chunk_grid.chunk_shape
    sharded = isinstance(codec, ShardingCodec)
    checksum = _raw_chunk_codecs(codec.codecs if sharded else meta.codecs)
    if checksum is None:
        return None
    if sharded:
        if not (
            _raw_codecs(codec.index_codecs, Crc32cCodec)
            and codec.index_location == ShardingCodecIndexLocation.end
        ):
            return None
        chunk_rows, chunk_cols = codec.chunk_shape
    else:
        chunk_rows, chunk_cols = file_rows, file_cols
    if file_cols != array.shape[1] or chunk_cols != array.shape[1] or file_rows % chunk_rows:
        return None
    root = Path(array.store_path.store.root)
    return RawRows(
        store=root,
        name=array.store_path.path,
        folder=root / array.store_path.path,
        chunk_key=meta.encode_chunk_key,
        file_rows=file_rows,
        chunk_rows=chunk_rows,
        sharded=sharded,
        row_bytes=array.shape[1] * array.dtype.itemsize,
        fill_value=meta.fill_value,
        checksum=checksum,
        strict=bool(meta.attributes.get(ALL_CHUNKS)),
    )


def _chunk_spans(layout: RawRows, fd: int, path: Path) -> list[list[int]]:
    """The ``[offset, nbytes]`` of each chunk of an open chunk file (its shard index)."""
    from numcodecs import CRC32C

    size = os.fstat(fd).st_size
    if not layout.sharded:  # one chunk: the whole file
        return [[0, size]]
    per_file = layout.file_rows // layout.chunk_rows
    index_bytes = 16 * per_file + 4
    try:
        index = CRC32C().decode(os.pread(fd, index_bytes, size - index_bytes))
    except (RuntimeError, ValueError, OSError) as err:
        raise layout.damaged(path, f"has a corrupt shard index ({err})") from err
    return np.frombuffer(index, dtype="<u8").reshape(per_file, 2).tolist()


def _pread_full(fd: int, view: memoryview, offset: int, limit: int) -> int:
    """Reads into ``view`` from ``offset``, at most ``limit`` bytes; returns the bytes read."""
    done, want = 0, min(len(view), max(0, limit))
    while done < want:
        got = os.preadv(fd, [view[done:want]], offset + done)
        if got == 0:
            break
        done += got
    return done


def _pread_rows(
    layout: RawRows, fd: int, path: Path, span: list[int], skip: int, rows: Any
) -> None:
    """Reads ``rows`` from a chunk at ``span`` (offset, size), ``skip`` bytes into it.

    Raises:
        HistofuseError: If the chunk holds fewer bytes than the rows.
    """
    offset, nbytes = span
    view = memoryview(rows.reshape(-1).view(np.uint8))
    done = _pread_full(fd, view, offset + skip, nbytes - skip)
    if done != len(view):
        raise layout.damaged(path, f"is truncated ({done} of {len(view)} bytes of rows)")


def _read_checked(fd: int, buf: np.ndarray, offset: int, crc: int) -> int | None:
    """Reads ``buf`` (bytes) from ``offset`` and extends ``crc`` over it; None at an early end.

    One ``preadv`` per :data:`CRC_PIECE` bytes, each piece checked right after it is read, while
    it is still in the CPU cache.
    """
    import google_crc32c

    extend, preadv = google_crc32c.extend, os.preadv
    for a in range(0, len(buf), CRC_PIECE):
        piece = buf[a : a + CRC_PIECE]
        short = preadv(fd, [piece], offset + a) != len(piece)  # then finish the piece, or fail
        if short and _pread_full(fd, memoryview(piece), offset + a, len(piece)) != len(piece):
            return None
        crc = extend(crc, piece)
    return crc


def _crc_of_range(fd: int, offset: int, nbytes: int, crc: int | None) -> int | None:
    """Extends ``crc`` over ``nbytes`` of the file from ``offset``; None if the file ends first."""
    scratch = np.empty(min(CRC_PIECE, nbytes), dtype=np.uint8)
    for a in range(0, nbytes, CRC_PIECE):
        if crc is None:
            break
        crc = _read_checked(fd, scratch[: min(CRC_PIECE, nbytes - a)], offset + a, crc)
    return crc


def _pread_rows_checked(
    layout: RawRows, fd: int, path: Path, span: list[int], skip: int, rows: Any
) -> None:
    """As :func:`_pread_rows`, and verifies the chunk's crc32c (its last 4 bytes).

    The rows are read straight into ``rows`` and checked piece by piece
    (:func:`_read_checked`); the chunk's bytes before and after them, if any, are read into a
    small scratch buffer and checked too, so the checksum always covers the whole chunk.

    Raises:
        HistofuseError: If the chunk is truncated or its checksum differs.
    """
    offset, nbytes = span
    data = nbytes - 4
    out = rows.reshape(-1).view(np.uint8)
    if skip + len(out) > data:
        raise layout.damaged(path, f"is truncated (fewer than {len(out)} bytes of rows)")
    crc = _crc_of_range(fd, offset, skip, 0)
    crc = None if crc is None else _read_checked(fd, out, offset + skip, crc)
    end = skip + len(out)
    crc = _crc_of_range(fd, offset + end, data - end, crc)
    stored = os.pread(fd, 4, offset + data)
    if crc is None or len(stored) != 4:
        raise layout.damaged(path, "is truncated")
    if stored != struct.pack("<I", crc):
        raise layout.damaged(path, "fails its crc32c checksum (corrupt or altered data)")


def _read_file_rows(
    layout: RawRows, fd: int, path: Path, first: int, start: int, stop: int, out: np.ndarray
) -> None:
    """Reads rows ``[start, stop)`` that lie in the open chunk file whose first row is ``first``."""
    read = _pread_rows_checked if layout.checksum else _pread_rows
    for k, span in enumerate(_chunk_spans(layout, fd, path)):
        row0 = first + k * layout.chunk_rows
        a, b = max(start, row0), min(stop, row0 + layout.chunk_rows)
        if a >= b:
            continue
        if span[0] != _EMPTY_CHUNK:
            read(layout, fd, path, span, (a - row0) * layout.row_bytes, out[a - start : b - start])
        elif layout.strict:
            raise layout.damaged(path, f"lacks the chunk of rows {row0}-{row0 + layout.chunk_rows}")
        else:
            out[a - start : b - start] = layout.fill_value


def read_rows(layout: RawRows, start: int, stop: int, out: np.ndarray) -> None:
    """Reads rows ``[start, stop)`` of an array laid out as ``layout`` straight into ``out``.

    Each chunk's rows are read from its file into their rows of ``out`` with one ``preadv``
    (in pieces of :data:`CRC_PIECE`, each checked, where chunks carry a checksum); rows of
    chunks never written (all fill value) are filled, unless every chunk was written.

    Raises:
        HistofuseError: If a chunk file is missing (of an array whose chunks were all written),
            shorter than its chunks, fails its checksum or has a corrupt shard index.
    """
    for number in range(start // layout.file_rows, -(-stop // layout.file_rows)):
        first = number * layout.file_rows
        path = layout.folder / layout.chunk_key((number, 0))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            if layout.strict:
                raise layout.damaged(path, "is missing") from None
            # all of its chunks were fill values
            out[max(start, first) - start : min(stop, first + layout.file_rows) - start] = (
                layout.fill_value
            )
            continue
        try:
            _read_file_rows(layout, fd, path, first, start, stop, out)
        finally:
            os.close(fd)


def read_whole(array: Any) -> np.ndarray | None:
    """Reads a whole raw array (see :func:`raw_rows`) from its files; None for other layouts."""
    layout = raw_rows(array)
    if layout is None:
        return None
    out = np.empty(array.shape, dtype=array.dtype)
    read_rows(layout, 0, array.shape[0], out)
    return out


def read_block(pieces: list[tuple[Any, int, int]], dim: int, dtype: str) -> np.ndarray:
    """Reads row ranges of several feature arrays into one (N, D) array.

    Each piece is ``(zarr AsyncArray, start, stop)``. Raw (uncompressed) arrays are read from
    their files straight into their rows of the output (:func:`read_rows`), one chunk per task
    on a few threads (reads release the GIL). Others go through zarr: all are awaited together
    in one call into zarr's event loop (one hand-off between threads, not one per array), each
    decoding into its rows of the output.
    """
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    rows = [stop - start for _, start, stop in pieces]
    out = np.empty((sum(rows), dim), dtype=dtype)
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(int).tolist()
    nd = default_buffer_prototype().nd_buffer
    direct: list[tuple[RawRows, int, int, np.ndarray]] = []
    reads = []
    for i, (array, start, stop) in enumerate(pieces):
        layout = raw_rows(array)
        if layout is None:
            check_chunk_files(array)
            target = nd.from_numpy_array(out[offsets[i] : offsets[i + 1]])
            selection = (slice(start, stop), slice(None))
            reads.append(array.get_orthogonal_selection(selection, out=target))
            continue
        a = start
        while a < stop:  # one task per chunk
            b = min(stop, (a // layout.chunk_rows + 1) * layout.chunk_rows)
            direct.append((layout, a, b, out[offsets[i] + a - start : offsets[i] + b - start]))
            a = b
    _read_direct(direct)
    if reads:

        async def gather() -> None:
            await asyncio.gather(*reads)

        sync(gather())
    return out


def _read_direct(tasks: list[tuple[RawRows, int, int, np.ndarray]]) -> None:
    """Runs :func:`read_rows` tasks on up to :data:`READ_THREADS` threads."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(tasks), READ_THREADS)
    if workers <= 1:
        for task in tasks:
            read_rows(*task)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="histofuse-read") as pool:
        for _ in pool.map(lambda task: read_rows(*task), tasks):
            pass
