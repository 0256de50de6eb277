"""Reading feature rows straight from a store's chunk files.

A whole read of uncompressed features goes straight from the chunk files into the output
array, one copy as with ``np.load``; other layouts (and partial chunks) are read through zarr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histofuse.errors import HistofuseError

READ_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
"""Threads that read the chunks of one block of raw features."""

_EMPTY_CHUNK = 2**64 - 1


@dataclass(frozen=True)
class RawRows:
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


def _raw_codecs(codecs: tuple[Any, ...], *more: type) -> bool:
    """Whether ``codecs`` are the little-endian ``bytes`` codec followed by codecs of ``more``."""
    from zarr.codecs import BytesCodec, Endian

    first = codecs[0] if codecs else None
    little = isinstance(first, BytesCodec) and first.endian in (None, Endian.little)
    return little and [type(c) for c in codecs[1:]] == list(more)


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
    by the ``bytes`` codec alone (little-endian), optionally inside a ``sharding_indexed`` codec
    with its default index (little-endian offsets and sizes, crc32c, at the end of the file).
    """
    from zarr.codecs import Crc32cCodec, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation

    if not _plain_local_2d(array):
        return None
    meta = array.metadata
    (codec,) = meta.codecs if len(meta.codecs) == 1 else (None,)
    file_rows, file_cols = meta.chunk_grid.chunk_shape
    if isinstance(codec, ShardingCodec):
        if not (
            _raw_codecs(codec.codecs)
            and _raw_codecs(codec.index_codecs, Crc32cCodec)
            and codec.index_location == ShardingCodecIndexLocation.end
        ):
            return None
        chunk_rows, chunk_cols = codec.chunk_shape
    elif _raw_codecs(meta.codecs):
        chunk_rows, chunk_cols = file_rows, file_cols
    else:
        return None
    if file_cols != array.shape[1] or chunk_cols != array.shape[1] or file_rows % chunk_rows:
        return None
    return RawRows(
        folder=Path(array.store_path.store.root) / array.store_path.path,
        chunk_key=meta.encode_chunk_key,
        file_rows=file_rows,
        chunk_rows=chunk_rows,
        sharded=isinstance(codec, ShardingCodec),
        row_bytes=array.shape[1] * array.dtype.itemsize,
        fill_value=meta.fill_value,
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
        raise HistofuseError(
            f"feature chunk file {path} has a corrupt shard index ({err}); re-run its embed job"
        ) from err
    return np.frombuffer(index, dtype="<u8").reshape(per_file, 2).tolist()


def _pread_rows(
    fd: int, path: Path, span: list[int], skip: int, rows: np.ndarray, label: str
) -> None:
    """Reads ``rows`` from a chunk at ``span`` (offset, size), ``skip`` bytes into it.

    ``label`` names the rows in the error message.

    Raises:
        HistofuseError: If the chunk holds fewer bytes than the rows.
    """
    offset, nbytes = span
    want = rows.nbytes
    view = memoryview(rows.reshape(-1).view(np.uint8))
    done = 0
    while done < want and skip + done < nbytes:
        got = os.preadv(fd, [view[done:]], offset + skip + done)
        if got == 0:
            break
        done += got
    if done != want:
        raise HistofuseError(
            f"feature chunk file {path} is truncated ({done} of {want} bytes of {label}); "
            "re-run its embed job"
        )


def read_rows(layout: RawRows, start: int, stop: int, out: np.ndarray) -> None:
    """Reads rows ``[start, stop)`` of an array laid out as ``layout`` straight into ``out``.

    Each chunk's rows are read from its file into their rows of ``out`` with one ``preadv``;
    rows of chunks never written (all fill value) are filled.

    Raises:
        HistofuseError: If a file is shorter than its chunks or its shard index is corrupt.
    """
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
            for k, span in enumerate(_chunk_spans(layout, fd, path)):
                row0 = first + k * layout.chunk_rows
                a, b = max(start, row0), min(stop, row0 + layout.chunk_rows)
                if a >= b:
                    continue
                if span[0] == _EMPTY_CHUNK:
                    out[a - start : b - start] = layout.fill_value
                else:
                    skip = (a - row0) * layout.row_bytes
                    _pread_rows(fd, path, span, skip, out[a - start : b - start], f"rows {a}-{b}")
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
