"""Full read of one encoder's features from the Zarr cache vs ``np.load`` of the same array.

Writes one feature store of several samples (float16, the default) with
:class:`histofuse.cache.FeatureStoreWriter`, and the same concatenated array with ``np.save``.
The cache read is :func:`histofuse.cache.open_features` (manifest, provenance check and the
index of every tile included) followed by :meth:`FeatureTable.load`, the in-memory read the
heads use; the reference is ``np.load``. ``ratio`` = cache read throughput ÷ ``np.load``
throughput. The same read through the lazy dask array (``.features.compute()``, which copies
the result once more) is reported as ``ratio_dask``. Also reports the store's size on disk
against the raw float32 array. Each figure is the best of ``REPEATS`` runs, interleaved, as
other processes load the machine.

Every chunk carries a crc32c that the reader verifies; the same store written without the
checksums (the writer's chunk codecs minus ``crc32c``) is read side by side:
``checksum_ratio`` = checked read throughput ÷ unchecked read throughput. ``load_avg`` is the
machine's 1-, 5- and 15-minute load average when the reads end (other work skews every figure).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

N_SAMPLES = 8
N_TILES = 4000  # per sample
DIM = 1024
REPEATS = 11


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write(store: Path, arrays: list[np.ndarray], checksums: bool = True) -> None:
    """Writes the samples with the writer; without ``checksums``, its codecs minus crc32c."""
    from histofuse.cache import FeatureStoreWriter, writer

    make = writer._checked
    if not checksums:
        writer._checked = lambda: {**make(), "compressors": None}
    try:
        with FeatureStoreWriter(store, {"cache_key": "bench"}) as w:
            for i, a in enumerate(arrays):
                w.add(f"S{i}", a, np.zeros((len(a), 2), np.int64))
    finally:
        writer._checked = make


def run(tmp: Path) -> dict[str, Any]:
    """Measures cache read vs ``np.load``; returns ``ratio`` = cache ÷ np.load throughput."""
    from histofuse.cache import open_features

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(N_TILES, DIM)).astype(np.float32) for _ in range(N_SAMPLES)]
    store, unchecked = tmp / "enc" / "0000.zarr", tmp / "unchecked" / "0000.zarr"
    _write(store, arrays)
    _write(unchecked, arrays, checksums=False)
    full16 = np.concatenate(arrays).astype(np.float16)
    npy = tmp / "features.npy"
    np.save(npy, full16)

    def cache_read() -> np.ndarray:
        return open_features([store]).load()

    def unchecked_read() -> np.ndarray:
        return open_features([unchecked]).load()

    def dask_read() -> np.ndarray:
        return open_features([store]).features.compute()

    def np_read() -> np.ndarray:
        return np.load(npy)

    assert np.array_equal(cache_read(), full16)
    assert np.array_equal(dask_read(), full16)
    assert np.array_equal(unchecked_read(), full16)
    readers = {
        "cache": cache_read,
        "unchecked": unchecked_read,
        "dask": dask_read,
        "np_load": np_read,
    }
    times = dict.fromkeys(readers, float("inf"))
    for _ in range(REPEATS):
        for name, fn in readers.items():
            t = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - t)
    raw32 = N_SAMPLES * N_TILES * DIM * 4
    return {
        "shape": [N_SAMPLES * N_TILES, DIM],
        "dtype": "float16",
        "cache_read_s": round(times["cache"], 4),
        "np_load_s": round(times["np_load"], 4),
        "dask_compute_s": round(times["dask"], 4),
        "unchecked_read_s": round(times["unchecked"], 4),
        "checksum_ratio": times["unchecked"] / times["cache"],
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "ratio": times["np_load"] / times["cache"],
        "ratio_dask": times["np_load"] / times["dask"],
        "store_bytes": _size(store),
        "raw_float32_bytes": raw32,
        "size_vs_raw_float32": _size(store) / raw32,
    }
