import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler

from histofuse.evaluation.metrics import per_gene_metrics
from histofuse.evaluation.runner import select_genes
from histofuse.evaluation.scoring import spot_units
from histofuse.evaluation.splits import task_splits
from histofuse.heads.probes import HESTProbe, make_head
from histofuse.settings import Genes


def _cohort(seed=0, n=600, d=300, g=12):
    rng = np.random.default_rng(seed)
    patients = np.repeat(["A", "B", "C", "D"], n // 4)
    samples = np.array([f"{p}-{i % 2}" for i, p in enumerate(patients)])
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.log1p(np.abs(x[:, :20] @ rng.normal(size=(20, g)) + rng.normal(size=(n, g))))
    return x, y, patients, samples


def _reference_pooled_pearson(x, y, train, test):
    """HEST: scaler + PCA + ridge on the train fold, Pearson per gene over pooled test spots."""
    scaler, pca = StandardScaler(), PCA(n_components=256, random_state=1)
    # training scores from fit_transform; float32 scores (HEST's torch.Tensor) fitted in float64
    ztr = pca.fit_transform(scaler.fit_transform(x[train])).astype(np.float32).astype(float)
    zte = pca.transform(scaler.transform(x[test])).astype(np.float32).astype(float)
    ridge = Ridge(
        alpha=100 / (ztr.shape[1] * y.shape[1]), solver="lsqr", fit_intercept=False, max_iter=1000
    ).fit(ztr, y[train])
    p, t = ridge.predict(zte), y[test]
    pc, tc = p - p.mean(0), t - t.mean(0)
    return (pc * tc).sum(0) / np.sqrt((pc**2).sum(0) * (tc**2).sum(0))


def test_hest_probe_reproduces_reference_per_gene_on_the_same_folds():
    x, y, patients, samples = _cohort()
    folds = task_splits({"scheme": "patient-kfold", "n_folds": 4}, patients, samples, seed=1)
    ref_folds = list(GroupKFold(4).split(x, groups=patients))
    assert len(folds) == 4
    for (train, test), (rtr, rte) in zip(folds, ref_folds, strict=True):
        np.testing.assert_array_equal(test, rte)
        pred = make_head("hest", {}, seed=1).fit(x[train], y[train]).predict(x[test])
        ours = per_gene_metrics(y[test], pred, [f"g{j}" for j in range(y.shape[1])])
        np.testing.assert_allclose(
            ours["pearson"], _reference_pooled_pearson(x, y, rtr, rte), rtol=0, atol=1e-6
        )


def test_per_sample_units_score_each_test_sample():
    samples = np.array(["s1", "s1", "s2", "s2", "s2"])
    units = spot_units(samples)
    assert [u[0] for u in units] == ["hest-pooled", "per-sample", "per-sample"]
    np.testing.assert_array_equal(units[2][1], [2, 3, 4])


def test_split_schemes():
    _x, _y, patients, samples = _cohort(n=80)
    lopo = task_splits({"scheme": "leave-one-patient-out"}, patients, samples, 1)
    assert len(lopo) == 4
    for train, test in lopo:
        assert not set(patients[train]) & set(patients[test])
    rep = task_splits(
        {"scheme": "repeated-kfold", "n_folds": 5, "n_repeats": 2}, patients, samples, 1
    )
    assert len(rep) == 10
    spot = task_splits({"scheme": "spot-kfold", "n_folds": 5}, patients, samples, 1)
    assert sorted(np.concatenate([t for _, t in spot])) == list(range(80))


def test_official_split_files(tmp_path):
    _x, _y, patients, samples = _cohort(n=80)
    pd.DataFrame({"sample_id": ["A-0", "A-1", "B-0", "B-1"]}).to_csv(tmp_path / "train_0.csv")
    pd.DataFrame({"sample_id": ["C-0", "C-1"]}).to_csv(tmp_path / "test_0.csv")
    [(train, test)] = task_splits(
        {"scheme": "official", "dir": str(tmp_path)}, patients, samples, 1
    )
    assert set(samples[test]) == {"C-0", "C-1"} and set(patients[train]) == {"A", "B"}
    from histofuse.errors import HistofuseError

    (tmp_path / "train_0.csv").unlink()
    with pytest.raises(HistofuseError, match="train_0.csv is missing"):
        task_splits({"scheme": "official", "dir": str(tmp_path)}, patients, samples, 1)


def _leak_probe(fit_on_all: bool):
    """A HEST probe; with ``fit_on_all`` its scaler and PCA also see the test rows (a leak)."""

    def run(x, y, train, test):
        rows = np.concatenate([train, test]) if fit_on_all else train
        scaler = StandardScaler().fit(x[rows])
        pca = PCA(16, random_state=1).fit(scaler.transform(x[rows]))
        ridge = Ridge(alpha=1.0).fit(pca.transform(scaler.transform(x[train])), y[train])
        return ridge.predict(pca.transform(scaler.transform(x[test])))

    return run


def _leaks(run, x, y, train, test) -> bool:
    """True if predictions for the first test spots change when other test spots change."""
    before = run(x, y, train, test)[:10]
    x2 = x.copy()
    x2[test[10:]] = np.random.default_rng(5).normal(size=(len(test) - 10, x.shape[1])) * 50
    return not np.allclose(run(x2, y, train, test)[:10], before, atol=1e-8)


def test_no_leakage_from_test_spots():
    x, y, patients, samples = _cohort()
    train, test = task_splits({"scheme": "patient-kfold", "n_folds": 4}, patients, samples, 1)[0]
    # The detector catches a planted leak ...
    assert _leaks(_leak_probe(fit_on_all=True), x, y, train, test)
    assert not _leaks(_leak_probe(fit_on_all=False), x, y, train, test)
    # ... and our heads (scaler, PCA, ridge, torch standardisation) fit on training rows only.
    for head, params in [("hest", {}), ("ridge", {}), ("hest-alphacv", {})]:

        def ours(xx, yy, tr, te, head=head, params=params):
            return make_head(head, params).fit(xx[tr], yy[tr]).predict(xx[te])

        assert not _leaks(ours, x, y, train, test), head
    tiny = {"embed_dim": 8, "num_heads": 2, "epochs": 2, "batch_size": 128, "standardize": True}

    def torch_head(xx, yy, tr, te):
        return make_head("mlp", tiny).fit(xx[tr], yy[tr]).predict(xx[te])

    assert not _leaks(torch_head, x, y, train, test)


def test_gene_selection_uses_training_folds_only():
    rng = np.random.default_rng(0)
    n = 200
    counts = pd.DataFrame(rng.poisson(5, size=(n, 6)).astype(float), columns=list("abcdef"))
    train, test = np.arange(150), np.arange(150, n)
    counts.loc[test, "f"] = rng.poisson(500, size=len(test))  # planted: variable only in test
    logc = np.log1p(counts)
    leaky = select_genes(logc, Genes(top_k=1, list=None, select_on="all"), train)
    clean = select_genes(logc, Genes(top_k=1, list=None, select_on="train"), train)
    assert leaky == ["f"]  # HEST's all-sample selection sees the test spots
    assert clean != ["f"]
    assert select_genes(logc, Genes(top_k=50, list=("b", "a"), select_on="train"), train) == [
        "b",
        "a",
    ]


def test_alphacv_picks_from_grid_and_ridge_probe_fits():
    x, y, *_ = _cohort(n=200)
    probe = make_head("hest-alphacv", {"n_components": 16}).fit(x, y)
    base = 100 / (16 * y.shape[1])
    assert any(np.isclose(probe.alpha_, base * a) for a in probe.alphas)
    assert isinstance(make_head("hest"), HESTProbe)
    assert make_head("ridge").fit(x, y).predict(x).shape == y.shape
