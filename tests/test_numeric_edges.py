"""Numerical edge cases in fit and metrics: flagged, never a crash, never NaN in the means.

The cohort's slides and expression files are real (the generated small cohort); the edge cases
are written into copies of its ``.h5ad`` files and into a real feature store.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from histofuse import settings
from histofuse.cache import FeatureStoreWriter
from histofuse.errors import HistofuseError
from histofuse.evaluation.metrics import per_gene_metrics
from histofuse.fit import fit_task
from histofuse.report.missing import missing_table
from histofuse.report.summary import summarise
from histofuse.samples import load_samples

CONSTANT_GENE = "g-const"


def _edge_cohort(small_cohort: Path, out: Path, nan_features: int = 3) -> tuple[Path, Path, dict]:
    """Copies of the small cohort's expression with edge cases, and a store of its spots.

    P1-S1 gets NaN and inf counts in two spots; P1-S2 gets three all-zero spots; every sample
    gets a gene that is zero in every spot. P2-S1's features hold NaN in ``nan_features``
    spots.

    Returns:
        The new sample sheet, the feature store, and the (sample, barcode) pairs that must be
        dropped.
    """
    sheet = load_samples(small_cohort)
    rng = np.random.default_rng(0)
    rows, bad = [], {}
    store = out / "features" / "enc" / "0000.zarr"
    with FeatureStoreWriter(store, {"cache_key": "k", "encoder": {"name": "enc"}}) as writer:
        for sample, row in sheet.iterrows():
            adata = anndata.read_h5ad(row["expression"])
            x = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, float)
            x = np.concatenate([x, np.zeros((len(x), 1))], axis=1)  # never expressed
            barcodes = adata.obs_names.astype(str).to_numpy()
            drop = []
            if sample == "P1-S1":
                x[0, 3], x[1, 7] = np.nan, np.inf
                drop = [barcodes[0], barcodes[1]]
            if sample == "P1-S2":
                x[:3] = 0.0  # all-zero spots are valid data, kept
            new = anndata.AnnData(
                X=x.astype(np.float32),
                obs=pd.DataFrame(index=adata.obs_names),
                var=pd.DataFrame(index=[*adata.var_names.astype(str), CONSTANT_GENE]),
            )
            path = out / f"{sample}.h5ad"
            new.write_h5ad(path)
            feats = rng.normal(size=(len(x), 16)) + x[:, :16].mean(axis=1, keepdims=True) / 10
            feats = np.nan_to_num(feats, nan=0.0, posinf=0.0)
            if sample == "P2-S1":
                feats[:nan_features, 2] = np.nan
                drop += list(barcodes[:nan_features])
            writer.add(sample, feats, np.zeros((len(x), 2), int), barcodes)
            bad[sample] = drop
            rows.append(
                {
                    "sample_id": sample,
                    "patient_id": row["patient_id"],
                    "slide": row["slide"],
                    "expression": str(path),
                }
            )
    out_sheet = out / "samples.tsv"
    pd.DataFrame(rows).to_csv(out_sheet, sep="\t", index=False)
    return out_sheet, store, bad


def _fit(sheet, store, tmp_path, head="hest", **task):
    task = {"genes": {"top_k": 45, "select_on": "all"}, "split": {"n_folds": 2}, **task}
    metrics = fit_task(
        "t",
        settings.load(settings.Task, "tasks", task),
        sheet,
        [store],
        "enc",
        head,
        {"cap_components": True} if head == "hest" else {},  # 16 features: fewer than 256
        tmp_path / "m.parquet",
        tmp_path / "p.parquet",
    )
    return metrics, pd.read_parquet(tmp_path / "p.parquet")


def test_metrics_flag_constant_and_non_finite_genes():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(20, 4))
    pred = y + rng.normal(size=(20, 4))
    y[:, 1] = 3.0  # constant truth
    pred[:, 2] = 0.5  # constant prediction
    pred[4, 3] = np.nan  # a diverged prediction
    m = per_gene_metrics(y, pred, ["a", "b", "c", "d"])
    assert m["constant"].tolist() == [False, True, True, True]
    assert m.loc[~m["constant"], "pearson"].notna().all()
    assert m.loc[m["constant"], "pearson"].isna().all()
    one = per_gene_metrics(y[:1], pred[:1], ["a", "b", "c", "d"])
    assert one["constant"].all() and (one["n"] == 1).all()


def test_edge_cases_are_flagged_and_means_stay_finite(small_cohort, tmp_path, caplog):
    sheet, store, bad = _edge_cohort(small_cohort, tmp_path)
    # three samples of two patients: the second fold tests one sample alone
    with caplog.at_level(logging.WARNING, logger="histofuse.fit"):
        metrics, pred = _fit(sheet, store, tmp_path, samples=["P1-S1", "P1-S2", "P2-S1"])
    # the spots with NaN/inf counts or NaN features are dropped, named in the log and the file
    dropped = {(s, b) for s, bs in bad.items() if s != "P2-S2" for b in bs}
    assert dropped and not dropped & set(zip(pred["sample"], pred["barcode"], strict=True))
    assert len(pred) == sum(
        len(anndata.read_h5ad(tmp_path / f"{s}.h5ad")) for s in ("P1-S1", "P1-S2", "P2-S1")
    ) - len(dropped)
    text = caplog.text
    assert "P1-S1.h5ad" in text and "2 spots" in text and "not finite" in text
    assert "P2-S1" in text and "3 spots" in text and "features" in text
    meta = pq.read_schema(tmp_path / "m.parquet").metadata[b"histofuse"].decode()
    assert "dropped_spots" in meta and bad["P1-S1"][0] in meta and bad["P2-S1"][0] in meta
    missing = missing_table([tmp_path / "m.parquet"])
    assert len(missing) == len(dropped) and (missing["fits"] == 1).all()
    assert set(zip(missing["sample"], missing["barcode"], strict=True)) == dropped
    assert missing["reason"].str.contains("not finite").all()
    # the all-zero spots are kept
    assert (pred["sample"] == "P1-S2").sum() == len(anndata.read_h5ad(tmp_path / "P1-S2.h5ad"))

    # a fold with a single test sample; the constant gene is flagged, not correlated
    pooled = metrics[metrics["protocol"] == "hest-pooled"].groupby("fold")["n"].first()
    per_sample = metrics[metrics["protocol"] == "per-sample"]
    alone = per_sample.groupby("fold")["sample"].unique()
    assert sorted(len(v) for v in alone) == [1, 2]
    fold = int(alone[alone.map(len) == 1].index[0])
    assert per_sample.loc[per_sample["fold"] == fold, "n"].iloc[0] == pooled[fold]
    assert metrics.loc[metrics["gene"] == CONSTANT_GENE, "constant"].all()
    assert metrics.loc[~metrics["constant"], "pearson"].notna().all()
    assert np.isfinite(pred.filter(like="pred:").to_numpy()).all()
    summary = summarise(metrics)
    assert summary[["pearson_mean", "pearson_std", "spearman_mean", "mse_mean"]].notna().all().all()
    assert (summary["n_constant"] > 0).all()


def test_torch_head_on_edge_cases(small_cohort, tmp_path):
    sheet, store, _ = _edge_cohort(small_cohort, tmp_path)
    metrics, pred = _fit(sheet, store, tmp_path, head="linear", transform="log1p_cpm")
    assert np.isfinite(pred.filter(like="pred:").to_numpy()).all()
    assert summarise(metrics)["pearson_mean"].notna().all()


def test_a_sample_with_no_usable_spot_is_a_clear_error(small_cohort, tmp_path):
    sheet, store, _ = _edge_cohort(small_cohort, tmp_path, nan_features=10_000)
    with pytest.raises(HistofuseError, match=r"P2-S1.*no spot with finite features"):
        _fit(sheet, store, tmp_path)


def test_expression_lacking_tile_barcodes_is_one_clear_error(small_cohort, tmp_path):
    sheet, store, _ = _edge_cohort(small_cohort, tmp_path)
    h5ad = tmp_path / "P1-S2.h5ad"
    adata = anndata.read_h5ad(h5ad)
    lost = adata.obs_names[:2].tolist()
    adata[2:].copy().write_h5ad(h5ad)  # replaced after tiling, without two spots
    cmd = [str(Path(sys.executable).parent / "histofuse"), "fit", "--task", "t", "--task-json"]
    cmd += ['{"split": {"n_folds": 2}}', "--samples", str(sheet), "--stores", str(store)]
    cmd += ["--features", "enc", "--head", "hest", "--head-params", '{"cap_components": true}']
    cmd += ["--metrics", str(tmp_path / "m.parquet")]
    cmd += ["--predictions", str(tmp_path / "p.parquet")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"histofuse: error: expression file {h5ad} lacks 2 barcodes")
    assert repr(lost[0]) in line or repr(lost[1]) in line
    assert "re-run the tile step" in line
    assert not (tmp_path / "m.parquet").exists() and not (tmp_path / "p.parquet").exists()
