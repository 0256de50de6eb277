"""Opening feature stores as one lazy dask array plus a tile index.

Every group's and array's metadata is consolidated into a store's root ``zarr.json``, so a
reader opens a store with one small file read instead of one per sample and array. Features stay
on disk until computed; each dask block reads the features of consecutive samples concurrently
(:func:`histofuse.cache.chunks.read_block`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.cache.chunks import check_chunk_files, damaged, read_block, read_whole
from histofuse.cache.manifest import ATTRS_KEY, read_manifest, rebuild_hint
from histofuse.errors import HistofuseError

READ_BLOCK_BYTES = 256 << 20
"""Largest block of the lazy feature array: the features of consecutive samples of one store
up to this size are read by one task, concurrently, straight into one output array."""


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
        return read_block(self._pieces, self.features.shape[1], str(self.features.dtype))


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
        if not (store / sample).is_dir():  # consolidated metadata still lists it
            raise HistofuseError(
                f"feature store {store}: sample {sample}: its group {store / sample} is missing; "
                f"{rebuild_hint(store)}"
            )
        group = await root.getitem(sample)
        features, coords = await asyncio.gather(group.getitem("features"), group.getitem("coords"))
        barcodes = None
        if await group.contains("barcodes"):
            barcodes = await _read_checked(store, await group.getitem("barcodes"))
        xy = read_whole(coords)  # a small local file: read in place, no thread hop
        return features, (await coords.getitem(...)) if xy is None else xy, barcodes

    return root, list(await asyncio.gather(*(one(s) for s in samples)))


async def _read_checked(store: Path, array: Any) -> np.ndarray:
    """Reads a whole array through zarr: every chunk file present, every checksum right.

    Raises:
        HistofuseError: Naming the store, sample and array.
    """
    check_chunk_files(array)
    try:
        return await array.getitem(...)
    except ValueError as err:
        if "checksum" not in str(err):
            raise
        raise damaged(store, array.store_path.path, "a chunk fails its crc32c checksum") from None


def _checked_provenance(
    store: Path, root: Any, manifest: dict[str, Any], want: str | None
) -> dict[str, Any]:
    """A store's provenance, once it agrees with its manifest and carries the key ``want``."""
    prov = dict(root.attrs.get(ATTRS_KEY, {}))
    if prov.get("cache_key") != manifest["cache_key"]:
        raise HistofuseError(f"feature store {store} disagrees with its manifest; re-embed it")
    if want is not None and prov["cache_key"] != want:
        raise HistofuseError(
            f"feature store {store} has cache key {prov['cache_key']}, expected {want}: it was "
            "made with another encoder, weights, pooling or tiling; re-run its embed job"
        )
    return prov


def _dask_part(
    store: Path, cache_key: str, names: list[str], arrays: list[Any], block_bytes: int
) -> tuple[Any, list[list[tuple[Any, int, int]]]]:
    """One store's features as a dask array of read blocks, and those blocks."""
    import hashlib
    import json

    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    dim, dtype = arrays[0].shape[1], arrays[0].dtype
    blocks = _blocks(arrays, block_bytes)
    if not blocks:  # only empty samples
        return da.zeros((0, dim), dtype=dtype), blocks
    blob = json.dumps([str(store.resolve()), cache_key, names]).encode()
    key = "histofuse-features-" + hashlib.sha256(blob).hexdigest()[:16]
    # Each task is a partial, so dask does not walk the zarr arrays it holds.
    graph = {
        (key, b, 0): (partial(read_block, pieces, dim, str(dtype)),)
        for b, pieces in enumerate(blocks)
    }
    rows = tuple(sum(stop - start for _, start, stop in pieces) for pieces in blocks)
    layer = HighLevelGraph.from_collections(key, graph)
    return da.Array(layer, key, (rows, (dim,)), dtype), blocks


def _index(names: list[str], opened: list[tuple[Any, ...]]) -> pd.DataFrame:
    """One store's tile index: ``sample``, ``barcode`` (or empty), ``x``, ``y``."""
    xy = np.concatenate([np.asarray(c, dtype=np.int64).reshape(-1, 2) for _, c, _ in opened])
    barcodes = [
        np.asarray(bc, dtype=object) if bc is not None else np.full(len(c), "", object)
        for _, c, bc in opened
    ]
    return pd.DataFrame(
        {
            "sample": np.repeat(np.asarray(names, dtype=object), [len(c) for _, c, _ in opened]),
            "barcode": np.concatenate(barcodes),
            "x": xy[:, 0],
            "y": xy[:, 1],
        }
    )


def read_samples(
    stores: list[str | Path], samples: Collection[str], cache_key: str | None = None
) -> tuple[pd.DataFrame, np.ndarray] | None:
    """Reads the features of some samples of one encoder's stores into memory, without dask.

    The rows of :func:`open_features` (stores in the order given, each store's samples in its
    manifest's order) restricted to ``samples``, with the same checks (manifest, cache key,
    sample groups, chunk checksums), read as :meth:`FeatureTable.load` reads: each sample
    decoded straight into its rows of one array. Only these samples are opened, and no dask
    graph is built, gathered or imported.

    Args:
        stores: Store paths of one encoder.
        samples: Samples to read; others in the stores are not opened.
        cache_key: If given, every store must carry this cache key.

    Returns:
        The index (``sample``, ``barcode``, ``x``, ``y``) and the features (N, D) in the stores'
        dtype; None when no store holds any of the samples.

    Raises:
        HistofuseError: As :func:`open_features`, and if the stores' feature arrays differ in
            width or dtype.
    """
    from zarr.core.sync import sync

    wanted = set(samples)
    indexes, arrays, first = [], [], None
    for store in map(Path, stores):
        manifest = read_manifest(store)
        names = [name for name in manifest["samples"] if name in wanted]
        root, opened = sync(_open_samples(store, names))
        want = cache_key or (first or {}).get("cache_key")
        prov = _checked_provenance(store, root, manifest, want)
        first = first or prov
        if names:
            indexes.append(_index(names, opened))
            arrays += [features for features, _, _ in opened]
    if not arrays:
        return None
    dim, dtype = arrays[0].shape[1], arrays[0].dtype
    if any(a.shape[1] != dim or a.dtype != dtype for a in arrays):
        raise HistofuseError(
            f"feature stores {', '.join(map(str, stores))} hold features of different widths or "
            "dtypes; re-embed them with one configuration"
        )
    x = read_block([(a, 0, a.shape[0]) for a in arrays], dim, str(dtype))
    index = pd.concat(indexes, ignore_index=True) if len(indexes) > 1 else indexes[0]
    return index, x


def open_features(
    stores: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
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
        stores: One store path, or the store paths (shards) of one encoder.
        cache_key: If given, every store must carry this cache key.
        block_bytes: Largest block of the dask array (at least one storage chunk). Readers
            that stream rows under a memory budget ask for small blocks, since reading any row
            of a block reads all of it.

    Raises:
        HistofuseError: If a store is unfinished, or stores disagree on their cache key, or a
            store's key differs from ``cache_key``.
    """
    import dask.array as da
    from zarr.core.sync import sync

    if isinstance(stores, (str, os.PathLike)):
        stores = [stores]
    parts, indexes, pieces, first = [], [], [], None
    for store in map(Path, stores):
        manifest = read_manifest(store)
        names = list(manifest["samples"])
        root, opened = sync(_open_samples(store, names))
        want = cache_key or (first or {}).get("cache_key")
        prov = _checked_provenance(store, root, manifest, want)
        first = first or prov
        arrays = [features for features, _, _ in opened]
        part, blocks = _dask_part(store, prov["cache_key"], names, arrays, block_bytes)
        parts.append(part)
        pieces.extend(piece for block in blocks for piece in block)
        indexes.append(_index(names, opened))
    if not parts:
        raise HistofuseError("no feature stores given")
    return FeatureTable(
        features=parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0),
        index=pd.concat(indexes, ignore_index=True) if len(indexes) > 1 else indexes[0],
        provenance=first,
        _pieces=pieces,
    )
