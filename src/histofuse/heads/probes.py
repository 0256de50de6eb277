"""Linear probes.

``hest`` is HEST-Benchmark's probe exactly: ``StandardScaler → PCA(256, random_state=seed)``
fitted on the training fold, the PCA output cast to float32 (as the bench code does before its
ridge fit), then ``Ridge(solver="lsqr", alpha=100 / (d · n_genes), fit_intercept=False,
max_iter=1000)`` with d the PCA width.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from histofuse.errors import HistofuseError


class HESTProbe(RegressorMixin, BaseEstimator):
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

    def fit(self, X: np.ndarray, y: np.ndarray) -> HESTProbe:
        """Fits scaler and PCA on ``X`` and the ridge on the reduced features."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        y2 = y.reshape(len(y), -1)
        width = min(self.n_components, X.shape[0], X.shape[1])
        self.reducer_ = Pipeline(
            [("scaler", StandardScaler()), ("pca", PCA(width, random_state=self.random_state))]
        ).fit(X)
        z = self.reducer_.transform(X).astype(np.float32)
        self.alpha_ = self.alpha if self.alpha is not None else 100.0 / (z.shape[1] * y2.shape[1])
        self.ridge_ = Ridge(
            alpha=self.alpha_, solver="lsqr", fit_intercept=False, max_iter=self.max_iter
        ).fit(z, y2 if y.ndim > 1 else y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicts targets for ``X``."""
        check_is_fitted(self, "ridge_")
        X = validate_data(self, X, reset=False)
        return self.ridge_.predict(self.reducer_.transform(X).astype(np.float32))


HEADS: dict[str, type[BaseEstimator]] = {"hest": HESTProbe}


def make_head(name: str, params: dict[str, Any] | None = None, seed: int = 1) -> BaseEstimator:
    """Builds a head by name with hyperparameters from the config.

    Raises:
        HistofuseError: If the head is unknown or a hyperparameter does not exist.
    """
    if name not in HEADS:
        raise HistofuseError(f"unknown head {name!r}; choose one of {', '.join(sorted(HEADS))}")
    cls = HEADS[name]
    params = dict(params or {})
    est = cls()
    valid = est.get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise HistofuseError(
            f"head {name!r} has no hyperparameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(valid))}"
        )
    if "random_state" in valid and "random_state" not in params:
        params["random_state"] = seed
    return est.set_params(**params)
