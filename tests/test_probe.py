import numpy as np
import pytest
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from histofuse.errors import HistofuseError
from histofuse.heads.probes import HESTProbe, make_head


def _data(n=300, d=40, g=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(d, g))
    y = x @ w + rng.normal(scale=3.0, size=(n, g)) + 5.0
    return x, y


def _reference(xtr, ytr, xte, n_components, seed=1):
    """HEST-Benchmark's probe, written out step by step.

    Scaler and PCA scores of the training rows from ``fit_transform``; scores rounded to float32
    (HEST's ``torch.Tensor``) and fitted in float64 by an lsqr ridge without intercept.
    """
    scaler = StandardScaler()
    pca = PCA(n_components=n_components, random_state=seed)
    ztr = pca.fit_transform(scaler.fit_transform(xtr)).astype(np.float32).astype(np.float64)
    zte = pca.transform(scaler.transform(xte)).astype(np.float32).astype(np.float64)
    alpha = 100 / (ztr.shape[1] * ytr.shape[1])
    ridge = Ridge(alpha=alpha, solver="lsqr", fit_intercept=False, max_iter=1000, random_state=seed)
    return ridge.fit(ztr, ytr).predict(zte)


def test_matches_reference_computation():
    x, y = _data()
    probe = HESTProbe(n_components=16).fit(x[:200], y[:200])
    np.testing.assert_allclose(
        probe.predict(x[200:]), _reference(x[:200], y[:200], x[200:], 16), rtol=0, atol=1e-6
    )
    assert probe.alpha_ == pytest.approx(100 / (16 * 6))


def test_pca_wider_than_features_or_rows_is_an_error_naming_the_key():
    x, y = _data(n=300, d=40)
    with pytest.raises(
        HistofuseError, match=r"40 features.*`heads\.hest\.n_components` to at most 40"
    ):
        HESTProbe().fit(x, y)  # HEST's 256 components on 40 features
    with pytest.raises(HistofuseError, match=r"30 training rows.*at most 30"):
        HESTProbe(n_components=35).fit(x[:30], y[:30])
    with pytest.raises(HistofuseError, match=r"`heads\.hest-alphacv\.n_components`"):
        make_head("hest-alphacv").fit(x, y)


def test_capped_width_equals_the_probe_asked_for_that_width():
    x, y = _data(n=300, d=40)
    capped = HESTProbe(cap_components=True).fit(x[:200], y[:200])
    assert capped.reducer_.named_steps["pca"].n_components_ == 40
    exact = HESTProbe(n_components=40).fit(x[:200], y[:200])
    np.testing.assert_array_equal(capped.predict(x[200:]), exact.predict(x[200:]))


def test_predictive_on_signal():
    x, y = _data()
    pred = HESTProbe(n_components=30).fit(x[:200], y[:200]).predict(x[200:])
    r = [np.corrcoef(pred[:, j], y[200:, j])[0, 1] for j in range(y.shape[1])]
    assert min(r) > 0.5


def test_is_a_scikit_learn_estimator():
    probe = HESTProbe(n_components=8, alpha=0.5)
    c = clone(probe)
    assert c.get_params()["alpha"] == 0.5 and not hasattr(c, "ridge_")
    x, y = _data()
    assert HESTProbe(n_components=8).fit(x, y[:, 0]).predict(x).shape == (len(x),)


def test_make_head_checks_names_and_params():
    assert isinstance(make_head("hest", {"n_components": 8}, seed=7), HESTProbe)
    assert make_head("hest", {}, seed=7).random_state == 7
    with pytest.raises(HistofuseError, match="unknown head 'xgb'"):
        make_head("xgb")
    with pytest.raises(HistofuseError, match="no hyperparameter.*n_comp"):
        make_head("hest", {"n_comp": 3})
