"""The ``hest`` probe against HEST-Benchmark's probe written out independently, on real caches.

HEST-Benchmark (``mahmoodlab/HEST``, ``bench/benchmark.py::predict_single_split`` and
``bench/trainer.py::train_test_reg``), as facts:

* a ``StandardScaler → PCA(latent_dim, random_state=seed)`` pipeline; the training scores are
  its ``fit_transform``, the test scores its ``transform``;
* both are wrapped in ``torch.Tensor`` (float32) and passed to scikit-learn's ``Ridge(
  solver="lsqr", alpha=100 / (latent_dim · n_genes), random_state=seed, fit_intercept=False,
  max_iter=1000)``, which converts a tensor to float64;
* Pearson per gene (``scipy.stats.pearsonr``) over all test spots of the fold.

The features are the demo encoders' float16 caches read as float32, as the fit stage reads them.
"""

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from histofuse.data.expression import read_counts
from histofuse.embed import embed_shard
from histofuse.errors import HistofuseError
from histofuse.evaluation.features import load_feature_set
from histofuse.evaluation.metrics import per_gene_metrics
from histofuse.heads.probes import make_head
from histofuse.samples import load_samples

SEED = 1


@pytest.fixture(scope="module")
def cached(small_cohort, small_tiles, tmp_path_factory):
    """Real float16 stores of both demo encoders; log1p counts of the 20 most variable genes."""
    out = tmp_path_factory.mktemp("hest-reference")
    stores = {}
    for enc in ("tiny-vit", "tiny-cnn"):
        stores[enc] = out / enc / "0000.zarr"
        embed_shard(list(small_tiles.values()), enc, stores[enc], batch_size=16, device="cpu")
    sheet = load_samples(small_cohort)
    samples = sorted(sheet.index)
    x, index, _ = load_feature_set(list(stores.values()), samples)
    counts = [
        read_counts(sheet.loc[s, "expression"], index["barcode"][index["sample"] == s].to_numpy())
        for s in index["sample"].unique()
    ]
    assert (
        index["sample"].to_numpy() == np.repeat(index["sample"].unique(), list(map(len, counts)))
    ).all()
    y = np.log1p(np.concatenate([c.to_numpy() for c in counts]))
    y = y[:, np.argsort(-y.var(axis=0), kind="stable")[:20]]
    patients = sheet.loc[index["sample"], "patient_id"].to_numpy()
    return {"x": x, "tiny-vit": x[:, :192], "y": y, "patients": patients}


def hest_reference(xtr, ytr, xte, yte, latent_dim):
    """HEST-Benchmark's probe and metric, as listed in the module docstring."""
    pipe = Pipeline(
        [("scaler", StandardScaler()), ("PCA", PCA(n_components=latent_dim, random_state=SEED))]
    )
    ztr, zte = torch.Tensor(pipe.fit_transform(xtr)), torch.Tensor(pipe.transform(xte))
    reg = Ridge(
        solver="lsqr",
        alpha=100 / (ztr.shape[1] * ytr.shape[1]),
        random_state=SEED,
        fit_intercept=False,
        max_iter=1000,
    ).fit(ztr, ytr)
    assert reg.coef_.dtype == np.float64  # scikit-learn fitted the tensor in float64
    pred = reg.predict(zte)
    return pred, np.array([pearsonr(yte[:, g], pred[:, g])[0] for g in range(yte.shape[1])])


@pytest.mark.parametrize(("features", "latent_dim"), [("tiny-vit", 32), ("x", 48)])
def test_hest_probe_equals_hest_benchmark_on_real_caches(cached, features, latent_dim):
    x, y = cached[features], cached["y"]
    assert x.dtype == np.float32 and x.shape[1] in (192, 704)
    folds = list(GroupKFold(2).split(x, groups=cached["patients"]))
    for train, test in folds:
        probe = make_head("hest", {"n_components": latent_dim}, seed=SEED)
        pred = probe.fit(x[train], y[train]).predict(x[test])
        ref_pred, ref_r = hest_reference(x[train], y[train], x[test], y[test], latent_dim)
        np.testing.assert_allclose(pred, ref_pred, rtol=0, atol=1e-6)
        ours = per_gene_metrics(y[test], pred, [f"g{g}" for g in range(y.shape[1])])["pearson"]
        np.testing.assert_allclose(ours, ref_r, rtol=0, atol=1e-6)
        assert np.nanmean(ref_r) > 0.1  # a learnable signal, so the comparison means something


def test_hest_default_width_on_narrow_features_is_an_error_as_in_hest(cached):
    x, y = cached["tiny-vit"], cached["y"]
    train, test = next(GroupKFold(2).split(x, groups=cached["patients"]))
    with pytest.raises(ValueError, match="n_components=256"):
        hest_reference(x[train], y[train], x[test], y[test], 256)  # HEST refuses too
    with pytest.raises(HistofuseError, match=r"192 features.*`heads\.hest\.n_components`"):
        make_head("hest", {}, seed=SEED).fit(x[train], y[train])
