"""The ``hest`` probe vs the same computation written the way HEST-Benchmark's bench code does it.

Both fit ``StandardScaler → PCA(256) → Ridge(lsqr)`` on the same training data (1536-d features,
4000 training and 1000 test spots, 50 genes) and predict the test spots, alternately, best of
five. ``ratio`` = reference time ÷ our time (> 1 means faster); predictions must agree to 1e-6.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from histofuse.heads.probes import HESTProbe


def _reference(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, seed: int = 1) -> np.ndarray:
    pipe = Pipeline(
        [("scaler", StandardScaler()), ("PCA", PCA(n_components=256, random_state=seed))]
    )
    pipe.fit(xtr)
    ztr = pipe.transform(xtr).astype(np.float32)
    zte = pipe.transform(xte).astype(np.float32)
    alpha = 100 / (ztr.shape[1] * ytr.shape[1])
    reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False, max_iter=1000)
    reg.fit(ztr, ytr)
    return reg.predict(zte)


def run(tmp: Path) -> dict:
    """Times both and writes ``hest_probe.json`` into ``tmp``."""
    rng = np.random.default_rng(0)
    n, d, g = 5000, 1536, 50
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.log1p(np.abs(x[:, :64] @ rng.normal(size=(64, g)) + rng.normal(size=(n, g))))
    xtr, xte, ytr = x[:4000], x[4000:], y[:4000]
    ours_t, ref_t = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        ref = _reference(xtr, ytr, xte)
        ref_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours = HESTProbe().fit(xtr, ytr).predict(xte)
        ours_t.append(time.perf_counter() - t0)
    max_diff = float(np.abs(ours - ref).max())
    result = {
        "ratio": min(ref_t) / min(ours_t),
        "ours_s": min(ours_t),
        "reference_s": min(ref_t),
        "max_abs_diff": max_diff,
        "shape": {"train": len(xtr), "test": len(xte), "dim": d, "genes": g},
    }
    (tmp / "hest_probe.json").write_text(json.dumps(result, indent=2))
    return result
