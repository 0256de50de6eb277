"""Peak memory of pooling one large slide bag: streamed under a budget vs read whole.

One slide of 32768 tiles × 1024 features (float16 in the cache, 128 MiB as float32) is
mean-pooled twice from the same store, measured with ``tracemalloc``: by
:meth:`histofuse.bulk.bags.SlideBags.mean_pool` under an 8 MiB budget, and by reading the whole
bag with ``open_features`` and averaging it (what loading every bag at once would cost per
slide). ``ratio`` = whole-bag peak ÷ streamed peak (> 1 means less memory); the two means must
agree. One ABMIL epoch over two such slides under the budget is also timed and measured.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np

from histofuse.bulk.bags import SlideBags
from histofuse.bulk.heads import ABMILRegressor
from histofuse.cache import FeatureStoreWriter, open_features


def _peak(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, peak, seconds


def run(tmp: Path) -> dict:
    """Writes a two-slide store into ``tmp`` and measures both ways of pooling one slide."""
    n, d, budget = 32768, 1024, 8.0
    rng = np.random.default_rng(0)
    store = tmp / "big.zarr"
    with FeatureStoreWriter(store, {"cache_key": "b", "encoder": {"name": "big"}}) as w:
        for s in ("S0", "S1"):
            w.add(s, rng.normal(size=(n, d)).astype(np.float16), np.zeros((n, 2), np.int64))

    def whole() -> np.ndarray:
        table = open_features([store])
        rows = np.flatnonzero(table.index["sample"] == "S0")
        return np.asarray(table.features[rows].compute(), np.float32).mean(axis=0)

    bags = SlideBags.open([store], memory_mb=budget)
    ref, ref_peak, ref_s = _peak(whole)
    ours, our_peak, our_s = _peak(lambda: bags.mean_pool(["S0"])[0])
    if not np.allclose(ref, ours, atol=1e-5):
        raise AssertionError("streamed and whole-bag means differ")
    # One tiny fit first, so torch's lazy imports (Adam) are not counted in the peak.
    small = SlideBags.open([store], memory_mb=0.01)
    small.ranges = {"S0": (0, 4)}
    ABMILRegressor(attention_dim=4, hidden=4, epochs=1).fit(["S0"], np.zeros((1, 1)), bags=small)
    est = ABMILRegressor(attention_dim=64, hidden=64, epochs=1, batch_size=2)
    _, abmil_peak, abmil_s = _peak(lambda: est.fit(["S0", "S1"], np.zeros((2, 4)), bags=bags))
    mib = 1 << 20
    return {
        "ratio": ref_peak / our_peak,
        "tiles": n,
        "dim": d,
        "bag_float32_mib": n * d * 4 / mib,
        "budget_mib": budget,
        "chunk_rows": bags.chunk_rows,
        "max_rows_read": bags.max_rows_read,
        "whole_bag_peak_mib": ref_peak / mib,
        "streamed_peak_mib": our_peak / mib,
        "whole_bag_seconds": ref_s,
        "streamed_seconds": our_s,
        "abmil_epoch_two_slides_peak_mib": abmil_peak / mib,
        "abmil_epoch_two_slides_seconds": abmil_s,
    }
