"""Linear probes.

``hest`` is HEST-Benchmark's probe as its released code runs it (``predict_single_split`` and
``train_test_reg``): ``StandardScaler → PCA(n_components, random_state=seed)`` fitted on the
training fold with ``fit_transform`` (the training scores come from the fit itself, the test
scores from ``transform``), both score sets rounded to float32 (HEST wraps them in
``torch.Tensor``) and handed to ``Ridge(solver="lsqr", alpha=100 / (d · n_genes),
fit_intercept=False, max_iter=1000, random_state=seed)``, which upcasts them to float64; d is the
PCA width. The scaler and PCA run in the features' own dtype (float32 from the cache), as HEST's
do on float32 embeddings. A PCA wider than the features or the training rows is an error, as in
HEST, unless ``cap_components`` is set.
"""

from __future__ import annotations

import logging
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

if TYPE_CHECKING:
    from histofuse.heads.streaming import LazyFeatures

log = logging.getLogger(__name__)


class HESTProbe(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """HEST-Benchmark's PCA + ridge probe, as its released code runs it (see the module docstring).

    Args:
        n_components: PCA width (HEST's ``latent_dim``, 256 there).
        alpha: Ridge penalty; None means HEST's ``100 / (n_components · n_genes)``.
        random_state: Seed of the PCA and the ridge (HEST passes its ``seed``, 1, to both).
        max_iter: lsqr iterations (HEST: 1000).
        cap_components: If True, a PCA wider than the features or the training rows is cut to
            ``min(rows, width)`` (the result then equals HEST's with that ``latent_dim``); if
            False (HEST's behaviour), it is an error.
    """

    head_name = "hest"

    def __init__(
        self,
        n_components: int = 256,
        alpha: float | None = None,
        random_state: int = 1,
        max_iter: int = 1000,
        cap_components: bool = False,
    ) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.random_state = random_state
        self.max_iter = max_iter
        self.cap_components = cap_components

    def _width(self, n_rows: int, n_features: int) -> int:
        """The PCA width for a training set of ``n_rows × n_features``.

        Raises:
            HistofuseError: If ``n_components`` exceeds either and ``cap_components`` is off.
        """
        limit = min(n_rows, n_features)
        if self.n_components <= limit:
            return self.n_components
        if self.cap_components:
            log.warning(
                "%s: PCA width cut from %d to %d (cap_components; HEST's run with latent_dim %d)",
                self.head_name,
                self.n_components,
                limit,
                limit,
            )
            return limit
        raise HistofuseError(
            f"head {self.head_name!r}: a PCA of n_components={self.n_components} (HEST's "
            f"latent_dim) needs as many features and training rows, but the fold has "
            f"{n_features} features and {n_rows} training rows; set "
            f"`heads.{self.head_name}.n_components` to at most {limit}, or "
            f"`heads.{self.head_name}.cap_components: true` to cut it per feature set"
        )

    def _fit_reducer(self, X: np.ndarray) -> np.ndarray:
        """Fits StandardScaler → PCA on the training features; returns HEST's ridge input."""
        self.reducer_ = Pipeline(
            [
                ("scaler", StandardScaler()),
                ("pca", PCA(self._width(*X.shape), random_state=self.random_state)),
            ]
        )
        return ridge_input(self.reducer_.fit_transform(X))

    def _ridge(self, width: int, n_genes: int) -> Ridge:
        """The unfitted ridge as HEST configures it (sets ``alpha_``)."""
        self.alpha_ = self.alpha if self.alpha is not None else 100.0 / (width * n_genes)
        return Ridge(
            alpha=self.alpha_,
            solver="lsqr",
            fit_intercept=False,
            max_iter=self.max_iter,
            random_state=self.random_state,
        )

    def fit(self, X: np.ndarray, y: np.ndarray) -> HESTProbe:
        """Fits scaler and PCA on ``X`` and the ridge on the reduced features."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        z = self._fit_reducer(X)
        self.ridge_ = self._ridge(z.shape[1], 1 if y.ndim == 1 else y.shape[1]).fit(z, y)
        self.n_iter_ = self.ridge_.n_iter_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicts targets for ``X``."""
        check_is_fitted(self, "ridge_")
        X = validate_data(self, X, reset=False)
        return self.ridge_.predict(ridge_input(self.reducer_.transform(X)))

    def fit_stream(self, X: LazyFeatures, y: np.ndarray, batch_rows: int) -> HESTProbe:
        """Fits on features streamed from the cache in batches of about ``batch_rows`` rows.

        Three passes (see :mod:`histofuse.heads.streaming`): ``StandardScaler.partial_fit``; the
        covariance of the scaled features, whose eigenvectors are the exact PCA; then the R
        factor of ``[Z | y]`` (Z: HEST's ridge input), on which the same lsqr ridge is fitted:
        lsqr sees the same problem as on ``Z`` itself (``Z = Q R``), so it takes the same steps
        and stops at the same iteration up to rounding.
        """
        from histofuse.heads.streaming import partial_scaler, ridge_r_factor, stream_pca

        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(X):
            raise HistofuseError(f"{len(X)} feature rows but {len(y)} target rows")
        self.n_features_in_ = X.shape[1]
        width = self._width(len(X), X.shape[1])
        scaler = partial_scaler(X, batch_rows)
        pca = stream_pca(X, scaler, width, batch_rows)
        self.reducer_ = Pipeline([("scaler", scaler), ("pca", pca)])
        r = ridge_r_factor(X, y.reshape(len(y), -1), self.reducer_, batch_rows)
        target = r[:, width:] if y.ndim > 1 else r[:, width]
        self.ridge_ = self._ridge(width, r.shape[1] - width).fit(r[:, :width], target)
        self.n_iter_ = self.ridge_.n_iter_
        return self


def ridge_input(scores: np.ndarray) -> np.ndarray:
    """PCA scores as HEST's ridge receives them: rounded to float32, upcast to float64."""
    return np.asarray(scores, dtype=np.float32).astype(np.float64)


class HESTAlphaCVProbe(HESTProbe):
    """The HEST probe with the ridge penalty chosen by inner cross-validation on the training fold.

    ``alpha`` is picked from ``alphas`` × HEST's default ``100 / (d · n_genes)`` by efficient
    leave-one-out (scikit-learn's ``RidgeCV``, one penalty shared by all genes), on the PCA
    features of the training fold only.

    Args:
        n_components: PCA width.
        alphas: Multipliers of HEST's default penalty to search.
        random_state: PCA seed.
        cap_components: As for :class:`HESTProbe`.
    """

    head_name = "hest-alphacv"

    def __init__(
        self,
        n_components: int = 256,
        alphas: tuple[float, ...] = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4),
        random_state: int = 1,
        cap_components: bool = False,
    ) -> None:
        self.n_components = n_components
        self.alphas = alphas
        self.random_state = random_state
        self.cap_components = cap_components

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
