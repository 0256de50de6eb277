"""Full read of one encoder's features from the Zarr cache, checksums verified or not.

Writes one feature store of several spot samples (float16, the default; coords and barcodes as
the embed stage writes them) with :class:`histofuse.cache.FeatureStoreWriter`, the same store
without checksums (the writer's chunk codecs minus ``crc32c``), and the concatenated features
with ``np.save``. Every read opens its store from scratch, as a job does; each figure is the
median of ``REPEATS`` runs, interleaved, as other processes load the machine. ``load_avg`` is
the machine's 1-, 5- and 15-minute load average before and after the reads. The ``_cpu``
ratios are the same ratios of CPU time (all threads of this process), which other processes on
a loaded machine skew less than wall time.

- ``fit_read_s`` / ``fit_unchecked_read_s``: the fit stage's read,
  :func:`histofuse.evaluation.features.load_feature_set` at its default (no memory budget):
  all rows of every sample, sample after sample in store order, as one float32 matrix, plus the
  tile index. ``checksum_ratio`` = unchecked ÷ checked time of this read (1 = checksums free).
- ``cache_read_s`` / ``unchecked_read_s``: the bare in-memory read,
  :func:`histofuse.cache.open_features` then :meth:`FeatureTable.load` (float16, no
  conversion): ``checksum_ratio_load`` = unchecked ÷ checked time of this read, where the
  checksum's share is largest.
- ``ratio`` = ``np.load`` time ÷ ``cache_read_s`` (throughput against ``np.load`` of the same
  array); ``ratio_dask`` the same for the lazy dask array (``.features.compute()``).

Also reports the store's size on disk against the raw float32 array.
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
    """Writes spot samples with the writer; without ``checksums``, its codecs minus crc32c."""
    from histofuse.cache import FeatureStoreWriter, writer

    make = writer._checked
    if not checksums:
        writer._checked = lambda: {**make(), "compressors": None}
    provenance = {"cache_key": "bench", "encoder": {"name": "bench"}}
    try:
        with FeatureStoreWriter(store, provenance) as w:
            for i, a in enumerate(arrays):
                barcodes = np.array([f"S{i}-{j}" for j in range(len(a))])
                w.add(f"S{i}", a, np.zeros((len(a), 2), np.int64), barcodes)
    finally:
        writer._checked = make


def _medians(readers: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU seconds (all threads) of each reader over ``REPEATS`` runs."""
    wall: dict[str, list[float]] = {name: [] for name in readers}
    cpu: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(REPEATS):
        for name, fn in readers.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return (
        {name: float(np.median(x)) for name, x in wall.items()},
        {name: float(np.median(x)) for name, x in cpu.items()},
    )


def run(tmp: Path) -> dict[str, Any]:
    """Measures cache reads with and without checksums, and against ``np.load``."""
    from histofuse.cache import open_features
    from histofuse.evaluation.features import load_feature_set

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(N_TILES, DIM)).astype(np.float32) for _ in range(N_SAMPLES)]
    samples = [f"S{i}" for i in range(N_SAMPLES)]
    store, unchecked = tmp / "enc" / "0000.zarr", tmp / "unchecked" / "0000.zarr"
    _write(store, arrays)
    _write(unchecked, arrays, checksums=False)
    full16 = np.concatenate(arrays).astype(np.float16)
    npy = tmp / "features.npy"
    np.save(npy, full16)
    readers = {
        "fit": lambda: load_feature_set([store], samples)[0],
        "fit_unchecked": lambda: load_feature_set([unchecked], samples)[0],
        "cache": lambda: open_features([store]).load(),
        "unchecked": lambda: open_features([unchecked]).load(),
        "dask": lambda: open_features([store]).features.compute(),
        "np_load": lambda: np.load(npy),
    }
    for name, read in readers.items():
        assert np.array_equal(read(), full16), name
    load_before = os.getloadavg()
    t, cpu = _medians(readers)
    raw32 = N_SAMPLES * N_TILES * DIM * 4
    return {
        "shape": [N_SAMPLES * N_TILES, DIM],
        "dtype": "float16",
        "fit_read_s": round(t["fit"], 4),
        "fit_unchecked_read_s": round(t["fit_unchecked"], 4),
        "checksum_ratio": t["fit_unchecked"] / t["fit"],
        "cache_read_s": round(t["cache"], 4),
        "unchecked_read_s": round(t["unchecked"], 4),
        "checksum_ratio_load": t["unchecked"] / t["cache"],
        "checksum_ratio_cpu": cpu["fit_unchecked"] / cpu["fit"],
        "checksum_ratio_load_cpu": cpu["unchecked"] / cpu["cache"],
        "np_load_s": round(t["np_load"], 4),
        "dask_compute_s": round(t["dask"], 4),
        "load_avg": [[round(x, 2) for x in a] for a in (load_before, os.getloadavg())],
        "ratio": t["np_load"] / t["cache"],
        "ratio_dask": t["np_load"] / t["dask"],
        "store_bytes": _size(store),
        "raw_float32_bytes": raw32,
        "size_vs_raw_float32": _size(store) / raw32,
    }
