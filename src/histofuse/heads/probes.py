"""Linear probes.

``hest`` is HEST-Benchmark's probe exactly: ``StandardScaler → PCA(256, random_state=seed)``
fitted on the training fold, the PCA output cast to float32 (as the bench code does before its
ridge fit), then ``Ridge(solver="lsqr", alpha=100 / (d · n_genes), fit_intercept=False,
max_iter=1000)`` with d the PCA width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from histofuse.errors import HistofuseError
from histofuse.heads.names import TORCH_HEADS
from histofuse.heads.streaming import batch_bounds

if TYPE_CHECKING:
    from histofuse.heads.streaming import LazyFeatures


class HESTProbe(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """HEST-Benchmark's PCA + ridge probe.

    Args:
        n_components: PCA width (capped by the training set's rank limit ``min(n, d)``).
        alpha: Ridge penalty; None means HEST's ``100 / (n_components_ · n_genes)``.
        random_state: PCA seed (HEST uses 1).
        max_iter: lsqr iterations.
    """

    def __init__(
        self,
        n_components: int = 256,
        alpha: float | None = None,
        random_state: int = 1,
        max_iter: int = 1000,
    ) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.random_state = random_state
        self.max_iter = max_iter

    def _fit_reducer(self, X: np.ndarray) -> np.ndarray:
        """Fits StandardScaler → PCA on the training features; returns them reduced, float32."""
        width = min(self.n_components, X.shape[0], X.shape[1])
        self.reducer_ = Pipeline(
            [("scaler", StandardScaler()), ("pca", PCA(width, random_state=self.random_state))]
        ).fit(X)
        return self.reducer_.transform(X).astype(np.float32)

    def fit(self, X: np.ndarray, y: np.ndarray) -> HESTProbe:
        """Fits scaler and PCA on ``X`` and the ridge on the reduced features."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        y2 = y.reshape(len(y), -1)
        z = self._fit_reducer(X)
        self.alpha_ = self.alpha if self.alpha is not None else 100.0 / (z.shape[1] * y2.shape[1])
        self.ridge_ = Ridge(
            alpha=self.alpha_, solver="lsqr", fit_intercept=False, max_iter=self.max_iter
        ).fit(z, y2 if y.ndim > 1 else y)
        self.n_iter_ = self.ridge_.n_iter_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicts targets for ``X``."""
        check_is_fitted(self, "ridge_")
        X = validate_data(self, X, reset=False)
        return self.ridge_.predict(self.reducer_.transform(X).astype(np.float32))

    def fit_stream(self, X: LazyFeatures, y: np.ndarray, batch_rows: int) -> HESTProbe:
        """Fits on features streamed from the cache in batches of about ``batch_rows`` rows.

        Three passes: ``StandardScaler.partial_fit``; ``IncrementalPCA.partial_fit`` on the scaled
        batches; then ``ZᵀZ`` and ``Zᵀy`` accumulated (float64) over the float32 PCA features and
        the ridge solved in closed form, ``(ZᵀZ + αI) w = Zᵀy``, without intercept and with HEST's
        α. The incremental PCA approximates the exact one (see :mod:`histofuse.heads.streaming`).
        """
        from scipy.linalg import solve
        from sklearn.decomposition import IncrementalPCA

        from histofuse.heads.streaming import partial_scaler

        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(X):
            raise HistofuseError(f"{len(X)} feature rows but {len(y)} target rows")
        y2 = y.reshape(len(y), -1)
        self.n_features_in_ = X.shape[1]
        width = min(self.n_components, len(X), X.shape[1])
        scaler = partial_scaler(X, batch_rows)
        pca = IncrementalPCA(width, copy=False)  # each batch is a fresh scaled copy
        for batch in X.batches(batch_rows, min_rows=width):
            pca.partial_fit(scaler.transform(batch))
        self.reducer_ = Pipeline([("scaler", scaler), ("pca", pca)])
        gram = np.zeros((width, width))
        cross = np.zeros((width, y2.shape[1]))
        for start, stop in batch_bounds(len(X), batch_rows):
            z = self.reducer_.transform(X.read(slice(start, stop))).astype(np.float32)
            gram += z.T.astype(np.float64) @ z
            cross += z.T.astype(np.float64) @ y2[start:stop]
        self.alpha_ = self.alpha if self.alpha is not None else 100.0 / (width * y2.shape[1])
        coef = solve(gram + self.alpha_ * np.eye(width), cross, assume_a="pos").T
        # A Ridge with the solved coefficients, so :meth:`predict` is shared with :meth:`fit`.
        self.ridge_ = Ridge(alpha=self.alpha_, fit_intercept=False)
        self.ridge_.coef_ = coef if y.ndim > 1 else coef[0]
        self.ridge_.intercept_ = np.zeros(y2.shape[1]) if y.ndim > 1 else 0.0
        self.ridge_.n_features_in_ = width
        self.n_iter_ = None  # solved in closed form, as Ridge reports for its direct solvers
        return self


class HESTAlphaCVProbe(HESTProbe):
    """The HEST probe with the ridge penalty chosen by inner cross-validation on the training fold.

    ``alpha`` is picked from ``alphas`` × HEST's default ``100 / (d · n_genes)`` by efficient
    leave-one-out (scikit-learn's ``RidgeCV``, one penalty shared by all genes), on the PCA
    features of the training fold only.

    Args:
        n_components: PCA width.
        alphas: Multipliers of HEST's default penalty to search.
        random_state: PCA seed.
    """

    def __init__(
        self,
        n_components: int = 256,
        alphas: tuple[float, ...] = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4),
        random_state: int = 1,
    ) -> None:
        self.n_components = n_components
        self.alphas = alphas
        self.random_state = random_state

    # The inner cross-validation needs the training features in memory.
    fit_stream = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> HESTAlphaCVProbe:
        """Fits scaler and PCA, selects alpha by inner CV, then fits the lsqr ridge."""
        from sklearn.linear_model import RidgeCV

        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        y2 = y.reshape(len(y), -1)
        z = self._fit_reducer(X)
        base = 100.0 / (z.shape[1] * y2.shape[1])
        cv = RidgeCV(alphas=[base * a for a in self.alphas], fit_intercept=False).fit(z, y2)
        self.alpha_ = float(cv.alpha_)
        self.ridge_ = Ridge(
            alpha=self.alpha_, solver="lsqr", fit_intercept=False, max_iter=1000
        ).fit(z, y2 if y.ndim > 1 else y)
        self.n_iter_ = self.ridge_.n_iter_
        return self


class RidgeProbe(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """``StandardScaler → Ridge`` on all features (no PCA), with an intercept.

    Args:
        alpha: Ridge penalty; None means ``100 / (d · n_genes)`` with d the feature width.
        random_state: Unused; accepted so every head takes a seed.
    """

    def __init__(self, alpha: float | None = None, random_state: int = 1) -> None:
        self.alpha = alpha
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgeProbe:
        """Fits the scaler and ridge on the training data."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        n_out = 1 if y.ndim == 1 else y.shape[1]
        self.alpha_ = self.alpha if self.alpha is not None else 100.0 / (X.shape[1] * n_out)
        self.scaler_ = StandardScaler().fit(X)
        self.ridge_ = Ridge(alpha=self.alpha_).fit(self.scaler_.transform(X), y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicts targets for ``X``."""
        check_is_fitted(self, "ridge_")
        X = validate_data(self, X, reset=False)
        return self.ridge_.predict(self.scaler_.transform(X))


def _torch_head(strategy: str) -> Callable[[], BaseEstimator]:
    def build() -> BaseEstimator:
        from histofuse.heads.fusion import TorchHead

        return TorchHead(strategy=strategy)

    return build


HEADS: dict[str, Callable[[], BaseEstimator]] = {
    "hest": HESTProbe,
    "hest-alphacv": HESTAlphaCVProbe,
    "ridge": RidgeProbe,
    **{name: _torch_head(name) for name in TORCH_HEADS},
}


def make_head(name: str, params: dict[str, Any] | None = None, seed: int = 1) -> BaseEstimator:
    """Builds a head by name with hyperparameters from the config.

    Raises:
        HistofuseError: If the head is unknown or a hyperparameter does not exist.
    """
    if name not in HEADS:
        raise HistofuseError(f"unknown head {name!r}; choose one of {', '.join(sorted(HEADS))}")
    params = dict(params or {})
    est = HEADS[name]()
    valid = {k: v for k, v in est.get_params().items() if k not in ("strategy", "blocks")}
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise HistofuseError(
            f"head {name!r} has no hyperparameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(valid))}"
        )
    if "random_state" in valid and "random_state" not in params:
        params["random_state"] = seed
    return est.set_params(**params)
