import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.model_selection import GroupKFold

from histofuse.errors import HistofuseError
from histofuse.evaluation.metrics import per_gene_metrics
from histofuse.evaluation.splits import patient_splits
from histofuse.report.summary import summarise


def test_per_gene_pearson_matches_scipy():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(50, 4))
    p = t + rng.normal(size=(50, 4))
    m = per_gene_metrics(t, p, list("abcd"))
    for j in range(4):
        assert m.loc[j, "pearson"] == pytest.approx(stats.pearsonr(t[:, j], p[:, j])[0], abs=1e-12)
        assert m.loc[j, "spearman"] == pytest.approx(
            stats.spearmanr(t[:, j], p[:, j])[0], abs=1e-12
        )
        assert m.loc[j, "mse"] == pytest.approx(np.mean((t[:, j] - p[:, j]) ** 2))
    assert not m["constant"].any()


def test_constant_genes_are_flagged_not_nan_poisoning():
    t = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 5.0]])
    p = np.array([[0.5, 2.0], [0.7, 3.5], [0.9, 4.0]])
    m = per_gene_metrics(t, p, ["flat", "ok"])
    assert m["constant"].tolist() == [True, False]
    assert np.isnan(m.loc[0, "pearson"]) and np.isfinite(m.loc[1, "pearson"])


@pytest.mark.parametrize("scheme", ["patient-kfold", "leave-one-patient-out"])
def test_patients_never_on_both_sides(scheme):
    patients = np.repeat(["p1", "p2", "p3", "p4"], [5, 7, 3, 9])
    folds = list(patient_splits(patients, scheme, n_folds=2))
    assert len(folds) == (2 if scheme == "patient-kfold" else 4)
    seen = []
    for train, test in folds:
        assert not set(patients[train]) & set(patients[test])
        seen.extend(test)
    assert sorted(seen) == list(range(len(patients)))


def test_kfold_uses_group_kfold_and_caps_folds():
    patients = np.repeat(["a", "b", "c"], 4)
    ours = [t.tolist() for _, t in patient_splits(patients, "patient-kfold", n_folds=10)]
    ref = [t.tolist() for _, t in GroupKFold(3).split(patients, groups=patients)]
    assert ours == ref


def test_split_errors():
    with pytest.raises(HistofuseError, match="two patients"):
        list(patient_splits(np.array(["a", "a"])))
    with pytest.raises(HistofuseError, match="unknown split scheme"):
        list(patient_splits(np.array(["a", "b"]), "random"))


def test_summary_aggregates_like_hest():
    rows = []
    values = {0: [0.2, 0.4, np.nan], 1: [0.6, 0.8, np.nan]}
    for fold, vals in values.items():
        for gene, v in zip(["g1", "g2", "g3"], vals, strict=True):
            rows.append(
                dict(
                    task="t",
                    features="e",
                    head="hest",
                    protocol="hest-pooled",
                    fold=fold,
                    seed=1,
                    gene=gene,
                    pearson=v,
                    spearman=v,
                    mse=1.0,
                    constant=np.isnan(v),
                    n=10,
                )
            )
    s = summarise(pd.DataFrame(rows))
    assert len(s) == 1
    r = s.iloc[0]
    assert r.pearson_mean == pytest.approx(0.5)  # folds 0.3 and 0.7
    assert r.pearson_std == pytest.approx(0.2)  # ddof = 0
    assert (r.n_folds, r.n_genes, r.n_constant, r.n_encoders) == (2, 3, 2, 1)
