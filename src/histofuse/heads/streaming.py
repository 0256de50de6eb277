"""Out-of-core heads: features streamed from the Zarr cache in row batches through dask.

The fit stage switches to this path when a task's features, as float32, exceed the memory budget
(config ``fit.memory_budget_mb``). Features then stay on disk as a :class:`LazyFeatures` view (one
dask array per encoder from :func:`histofuse.cache.open_features`, plus row indices) and
heads read one batch of rows at a time; targets and predictions (spots × genes) stay in memory.

Differences from the in-memory heads, by design:

* ``hest``: the scaler is fitted with ``partial_fit`` (the same mean and variance up to rounding);
  the PCA is exact, from the covariance of the scaled features accumulated in float64 (the route
  of scikit-learn's ``covariance_eigh`` solver; one d × d matrix in memory); and HEST's lsqr ridge
  is fitted on the R factor of ``[Z | y]`` accumulated batch by batch, which poses lsqr the same
  problem as the (float32-rounded, float64) PCA scores Z themselves. Where the in-memory PCA is
  exact too (scikit-learn picks ``covariance_eigh`` or ``full``), predictions agree to about 1e-5
  of their scale below full width and 1e-3 at full width, per-gene Pearson to 1e-6 and 1e-4
  (``tests/test_streaming.py``). Where scikit-learn picks its randomized solver (more than 1000
  features, or fewer than 10 rows per feature on a problem over 500 rows, with fewer
  components than 0.8 × min(rows, features)), the in-memory PCA, like HEST's, is approximate and
  the streamed one exact: the numbers then differ by that approximation.
* torch heads: the scaler is fitted with ``partial_fit``; each epoch visits the training rows in
  contiguous blocks of ``batch_rows`` in a seeded random block order, shuffled within each block
  (a block shuffle instead of a full permutation). Steps per epoch, optimiser and schedule are
  unchanged.
* ``ridge`` and ``hest-alphacv`` do not stream and say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from histofuse.errors import HistofuseError

BYTES_PER_VALUE = 4  # features are used as float32
BATCH_SHARE = 64  # one batch of rows takes at most 1/64 of the budget
MIN_BATCH_ROWS = 64  # fewer rows per read cost more in per-read overhead than they save


@dataclass
class LazyFeatures:
    """Rows of a feature set that stay in the cache until read.

    Attributes:
        arrays: One dask array (tiles, width) per encoder, in the feature set's order.
        rows: One int64 row index per encoder (same length): row ``i`` of the view is row
            ``rows[e][i]`` of ``arrays[e]``.
    """

    arrays: Sequence[Any]
    rows: Sequence[np.ndarray]

    @property
    def widths(self) -> list[int]:
        """Feature width of each encoder."""
        return [int(a.shape[1]) for a in self.arrays]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, total width)."""
        return len(self.rows[0]), sum(self.widths)

    def __len__(self) -> int:
        return len(self.rows[0])

    @property
    def nbytes(self) -> int:
        """Size of the view as an in-memory float32 matrix."""
        n, d = self.shape
        return n * d * BYTES_PER_VALUE

    def __getitem__(self, sel: np.ndarray | slice) -> LazyFeatures:
        """A sub-view (no data is read)."""
        return LazyFeatures(self.arrays, [np.asarray(r[sel], dtype=np.int64) for r in self.rows])

    def read(self, sel: np.ndarray | slice | None = None) -> np.ndarray:
        """Reads rows of the view (all when ``sel`` is None) as float32 (rows, total width).

        Each encoder's rows are read in ascending order (dask then touches each cache chunk once)
        with the synchronous scheduler, so at most one chunk is decoded at a time. Rows that are
        one contiguous range of the array once sorted (whole samples in store order, the common
        case) are read as a slice, which costs far less in dask than gathering them one by one.
        """
        n = len(self) if sel is None else len(np.arange(len(self))[sel])
        out = np.empty((n, self.shape[1]), dtype=np.float32)
        col = 0
        for arr, rows in zip(self.arrays, self.rows, strict=True):
            want = rows if sel is None else rows[sel]
            order = np.argsort(want, kind="stable")
            ascending = want[order]
            if is_range(ascending):
                ascending = slice(int(ascending[0]), int(ascending[-1]) + 1)
            block = arr[ascending].compute(scheduler="synchronous")
            out[order, col : col + arr.shape[1]] = block
            col += arr.shape[1]
        return out

    def batches(self, batch_rows: int, min_rows: int = 1) -> Iterator[np.ndarray]:
        """Yields the view in consecutive row batches (a short tail joins the previous batch)."""
        for start, stop in batch_bounds(len(self), batch_rows, min_rows):
            yield self.read(slice(start, stop))


def is_range(rows: np.ndarray) -> bool:
    """True if ascending ``rows`` are one run of consecutive integers (and not empty)."""
    return len(rows) > 0 and bool((np.diff(rows) == 1).all())


def batch_bounds(n: int, batch_rows: int, min_rows: int = 1) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` bounds of about ``batch_rows``; none shorter than ``min_rows``.

    A tail shorter than ``min_rows`` is merged into the previous batch.
    """
    batch_rows = max(int(batch_rows), int(min_rows), 1)
    bounds = [(s, min(s + batch_rows, n)) for s in range(0, n, batch_rows)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_rows:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def batch_rows_for(budget_mb: float, width: int) -> int:
    """Rows per streamed batch: at most 1/64 of the budget as float32, and at least 64 rows."""
    return max(MIN_BATCH_ROWS, int(budget_mb * 2**20 / BATCH_SHARE / (width * BYTES_PER_VALUE)))


def limit_malloc_arenas() -> None:
    """Lets glibc keep one malloc arena (as ``MALLOC_ARENA_MAX=1``) for the rest of the process.

    The cache reader decodes chunks on its own I/O thread; with glibc's default of one arena per
    thread, freed chunk buffers stay mapped there and resident memory creeps well past what is in
    use. Call before the first read. A no-op where libc has no ``mallopt`` (not glibc).
    """
    import ctypes
    import ctypes.util

    m_arena_max = -8
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(m_arena_max, 1)


def exceeds_budget(n_rows: int, width: int, budget_mb: float | None) -> bool:
    """True if ``n_rows × width`` float32 features do not fit in ``budget_mb`` MiB."""
    return budget_mb is not None and n_rows * width * BYTES_PER_VALUE > budget_mb * 2**20


def fit_predict(
    est: Any,
    x: np.ndarray | LazyFeatures,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    batch_rows: int | None = None,
) -> np.ndarray:
    """Fits ``est`` on the training rows and predicts the test rows, in memory or streamed.

    Args:
        est: A head from :func:`histofuse.heads.probes.make_head`.
        x: Features in memory, or a :class:`LazyFeatures` view to stream.
        y: Targets of all rows (in memory).
        train: Training rows.
        test: Test rows.
        batch_rows: Rows per streamed batch (streaming only).

    Returns:
        Predictions (test rows, genes).

    Raises:
        HistofuseError: If ``x`` is streamed and the head cannot stream.
    """
    if not isinstance(x, LazyFeatures):
        est.fit(x[train], y[train])
        return np.asarray(est.predict(x[test])).reshape(len(test), -1)
    if getattr(est, "fit_stream", None) is None:
        raise HistofuseError(
            f"head {type(est).__name__} cannot stream features larger than "
            "`fit.memory_budget_mb`; use the `hest` probe or a torch head, or raise the budget"
        )
    rows = batch_rows or len(x)
    est.fit_stream(x[train], y[train], rows)
    view = x[test]
    parts = [
        np.asarray(est.predict(view.read(slice(s, e)))).reshape(e - s, -1)
        for s, e in batch_bounds(len(view), rows)
    ]
    return np.concatenate(parts, axis=0)


def partial_scaler(x: LazyFeatures, batch_rows: int) -> Any:
    """A :class:`~sklearn.preprocessing.StandardScaler` fitted batch by batch on ``x``."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    for batch in x.batches(batch_rows):
        scaler.partial_fit(batch)
    return scaler


def stream_pca(x: LazyFeatures, scaler: Any, width: int, batch_rows: int) -> Any:
    """The exact PCA of the scaled features, from their covariance accumulated batch by batch.

    The float64 sums of the scaled rows and of their cross-products give the covariance (the
    route of scikit-learn's ``covariance_eigh`` solver); its top ``width`` eigenvectors, signed
    as scikit-learn signs them, are set on a :class:`~sklearn.decomposition.PCA` so that its
    ``transform`` applies them. Holds one d × d float64 matrix, d the feature width (18 MiB at
    d = 1536), and computes only the top eigenpairs in its memory.
    """
    from scipy.linalg import eigh
    from sklearn.decomposition import PCA
    from sklearn.utils.extmath import svd_flip

    n, d = x.shape
    total, cov = np.zeros(d), np.zeros((d, d))
    for batch in x.batches(batch_rows):
        scaled = scaler.transform(batch).astype(np.float64)
        total += scaled.sum(axis=0)
        cov += scaled.T @ scaled
    mean = total / n
    cov -= n * np.outer(mean, mean)  # in place: one d × d matrix
    cov /= n - 1
    variance = float(np.trace(cov))
    # only the top `width` eigenpairs, computed in the matrix's own memory
    values, vectors = eigh(cov, subset_by_index=[d - width, d - 1], overwrite_a=True)
    del cov
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    _, components = svd_flip(None, vectors.T, u_based_decision=False)
    pca = PCA(width)
    pca.components_ = components
    pca.mean_ = mean
    pca.explained_variance_ = values
    pca.explained_variance_ratio_ = values / variance
    pca.singular_values_ = np.sqrt(values * (n - 1))
    rest = min(n, d) - width
    pca.noise_variance_ = max(variance - values.sum(), 0.0) / rest if rest > 0 else 0.0
    pca.n_components_, pca.n_samples_, pca.n_features_in_ = width, n, d
    return pca


def ridge_r_factor(x: LazyFeatures, y: np.ndarray, reducer: Any, batch_rows: int) -> np.ndarray:
    """The R factor of ``[Z | y]``, Z being the reduced features as HEST's ridge receives them.

    Accumulated batch by batch (the R so far stacked on the next batch, QR again). With
    ``[Z | y] = Q R``, ``R[:, :k]`` and ``R[:, k:]`` (k = width of Z) pose the same least-squares
    problem as Z and y: the same residual norms, normal equations and lsqr iterates.
    """
    from histofuse.heads.probes import ridge_input

    r = np.zeros((0, reducer.named_steps["pca"].n_components_ + y.shape[1]))
    for start, stop in batch_bounds(len(x), batch_rows):
        z = ridge_input(reducer.transform(x.read(slice(start, stop))))
        r = np.linalg.qr(np.vstack([r, np.hstack([z, y[start:stop]])]), mode="r")
    return r
