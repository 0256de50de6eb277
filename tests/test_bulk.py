"""The slide-level bulk task: tables, bags streamed from the cache, ABMIL, case-level scoring."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from histofuse import settings
from histofuse.bulk.bags import SlideBags, budget_rows
from histofuse.bulk.evaluate import case_splits, fit_bulk_task, make_slide_head
from histofuse.bulk.heads import ABMILRegressor, SlideHead
from histofuse.bulk.targets import read_table, transform_bulk
from histofuse.cache import FeatureStoreWriter
from histofuse.errors import HistofuseError
from histofuse.evaluation.runner import select_genes

N_CASES, SLIDES_PER_CASE, N_GENES = 16, 2, 12
LEARN = {"epochs": 50, "lr": 1e-2}


def _bulk(doc, table):
    """A bulk task's settings from its document and table."""
    return settings.load(settings.BulkTask, "bulk", {**doc, "table": str(table)})


def _write_store(path, encoder, bags):
    with FeatureStoreWriter(path, {"cache_key": encoder, "encoder": {"name": encoder}}) as w:
        for slide, x in bags.items():
            w.add(slide, x, np.stack([np.arange(len(x)), np.zeros(len(x))], axis=1))
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Cases with a latent state; a third of each slide's tiles show it, the rest are noise."""
    out = tmp_path_factory.mktemp("bulk")
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(N_CASES, 3))
    load = rng.normal(size=(3, N_GENES))
    mix = {"enc-a": rng.normal(size=(3, 8)), "enc-b": rng.normal(size=(3, 6))}
    rows, bags = [], {e: {} for e in mix}
    bulk = {}
    for c in range(N_CASES):
        for k in range(SLIDES_PER_CASE):
            slide = f"C{c}-S{k}"
            rows.append({"sample_id": slide, "patient_id": f"C{c}", "slide": f"{slide}.tiff"})
            n = int(rng.integers(20, 60))
            signal = rng.random(n) < 0.3
            for enc, m in mix.items():
                x = rng.normal(size=(n, m.shape[1]))
                x[signal] += 3 * latent[c] @ m
                bags[enc][slide] = x.astype(np.float32)
            bulk[slide] = np.exp(latent[c] @ load + rng.normal(0, 0.1, N_GENES) + 3)
    sheet = out / "samples.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    table = pd.DataFrame(bulk).T
    table.columns = [f"G{i}" for i in range(N_GENES)]
    table.index.name = "sample_id"
    table.to_csv(out / "bulk.csv")
    stores = {e: _write_store(out / e / "0000.zarr", e, b) for e, b in bags.items()}
    return {"dir": out, "sheet": sheet, "table": out / "bulk.csv", "stores": stores, "bags": bags}


def _fit(cohort, tmp_path, agg="mean", head="mlp", task=None, params=None, stores=("enc-a",)):
    task = {
        "genes": {"top_k": 8},
        "split": {"scheme": "case-kfold", "n_folds": 3, "n_repeats": 2},
        **(task or {}),
    }
    params = {"epochs": 20, "batch_size": 8, "lr": 1e-3, "standardize": True, "hidden": 32,
              "latent_dim": 32, **(params or {})}  # fmt: skip
    if agg == "abmil":
        params.setdefault("attention_dim", 16)
    m = fit_bulk_task(
        "t", _bulk(task, cohort["table"]), cohort["sheet"], "+".join(stores), agg, head, params,
        tmp_path / "m.parquet", tmp_path / "p.parquet",
        stores=[cohort["stores"][s] for s in stores],
    )  # fmt: skip
    return m, pd.read_parquet(tmp_path / "p.parquet")


def test_tables_read_alike_in_every_format(cohort, tmp_path):
    csv = read_table(cohort["table"])
    csv.to_parquet(tmp_path / "b.parquet")
    assert read_table(tmp_path / "b.parquet").equals(csv)
    import anndata

    anndata.AnnData(csv.to_numpy(), obs=pd.DataFrame(index=csv.index),
                    var=pd.DataFrame(index=csv.columns)).write_h5ad(tmp_path / "b.h5ad")  # fmt: skip
    h5 = read_table(tmp_path / "b.h5ad")
    np.testing.assert_allclose(h5.to_numpy(), csv.to_numpy())
    assert list(h5.index) == list(csv.index)
    (tmp_path / "bad.csv").write_text("id,G0\na,1\na,2\n")
    with pytest.raises(HistofuseError, match="twice"):
        read_table(tmp_path / "bad.csv")
    with pytest.raises(HistofuseError, match="does not exist"):
        read_table(tmp_path / "none.csv")


def test_transforms_match_the_release():
    # TCGA FPKM-UQ 80.1049 is 6.3417 in the released *_log2.csv files.
    assert transform_bulk(np.array([[80.1049]]), "log2p1")[0, 0] == pytest.approx(6.3417, 1e-4)
    x = np.array([[1.0, 3.0], [0.0, 4.0]])
    np.testing.assert_allclose(transform_bulk(x, "log1p_cpm")[0], np.log1p([2.5e5, 7.5e5]))
    np.testing.assert_allclose(transform_bulk(x, "none"), x)
    with pytest.raises(HistofuseError, match="non-negative"):
        transform_bulk(-x, "log2p1")
    with pytest.raises(HistofuseError, match="unknown bulk transform"):
        transform_bulk(x, "zscore")


def test_top_genes_are_chosen_on_training_cases_only():
    values = pd.DataFrame({"a": [0, 1, 0, 1.0], "b": [0, 0, 0, 100.0], "c": [0, 0.5, 0, 0.5]})
    top1 = settings.Genes(top_k=1, list=None, select_on="train")
    assert select_genes(values, top1, np.array([0, 1, 2]), "table") == ["a"]
    assert select_genes(values, top1, np.array([0, 1, 2, 3]), "table") == ["b"]
    with pytest.raises(HistofuseError, match="not in the table"):
        select_genes(values, settings.Genes(50, ("zz",), "train"), np.arange(4), "table")


def test_case_splits_never_put_a_case_on_both_sides():
    cases = [f"C{i}" for i in range(12)]
    folds = case_splits(cases, {"scheme": "case-kfold", "n_folds": 5, "n_repeats": 10}, 1)
    assert len(folds) == 50
    for rep in range(10):
        tested = np.concatenate([te for r, _, _, te in folds if r == rep])
        assert sorted(tested) == sorted(cases)  # every case tested once per repeat
    for _, _, tr, te in folds:
        assert not set(tr) & set(te)
    assert [list(f[3]) for f in folds[:5]] != [list(f[3]) for f in folds[5:10]]  # reshuffled
    loco = case_splits(cases[:3], {"scheme": "leave-one-case-out", "n_repeats": 2}, 1)
    assert [len(te) for *_, te in loco] == [1] * 6
    with pytest.raises(HistofuseError, match="exceeds"):
        case_splits(cases[:3], {"scheme": "case-kfold", "n_folds": 5}, 1)


def test_two_slides_of_a_case_are_averaged_and_scored_once(cohort, tmp_path):
    metrics, pred = _fit(cohort, tmp_path)
    assert set(metrics["head"]) == {"mean-mlp"} and set(metrics["protocol"]) == {"case"}
    # Each test case (2 slides) is one prediction row and one point of the per-gene Pearson.
    assert (pred["n_slides"] == SLIDES_PER_CASE).all()
    assert not pred.duplicated(["seed", "fold", "case"]).any()
    per_fold = pred.groupby(["seed", "fold"]).size().rename("cases").reset_index()
    n = metrics.merge(per_fold, on=["seed", "fold"])
    assert (n["n"] == n["cases"]).all() and set(n["cases"]) == {5, 6}
    assert metrics.groupby(["seed", "fold"]).ngroups == 6
    for _, per_run in pred.groupby("seed"):
        assert sorted(per_run["case"]) == sorted(f"C{c}" for c in range(N_CASES))
    # Recompute the first fold by hand: the case's prediction is the mean of its slides'.
    meta = json.loads(__import__("pyarrow.parquet").parquet.read_schema(tmp_path / "m.parquet")
                      .metadata[b"histofuse"])  # fmt: skip
    _, _, train_cases, test_cases = case_splits(
        [f"C{c}" for c in range(N_CASES)], {"scheme": "case-kfold", "n_folds": 3}, 1
    )[0]
    genes = meta["genes"]["1/0"]
    bags = SlideBags.open([cohort["stores"]["enc-a"]])
    slides = [f"C{c}-S{k}" for c in range(N_CASES) for k in range(SLIDES_PER_CASE)]
    x = bags.mean_pool(slides)
    y = np.log2(read_table(cohort["table"]).loc[slides, genes].to_numpy() + 1)
    case = np.array([s.split("-")[0] for s in slides])
    train, test = np.isin(case, train_cases), np.isin(case, test_cases)
    est = make_slide_head("mean", "mlp", {"epochs": 20, "batch_size": 8, "lr": 1e-3,
                          "standardize": True, "hidden": 32, "latent_dim": 32}, 1)  # fmt: skip
    p = est.fit(x[train], y[train]).predict(x[test])
    expect = pd.DataFrame(p, columns=genes).groupby(case[test]).mean()
    got = pred[(pred["seed"] == 1) & (pred["fold"] == 0)].set_index("case")
    np.testing.assert_allclose(got[[f"pred:{g}" for g in genes]], expect, rtol=1e-5, atol=1e-5)
    truth = pd.DataFrame(y[test], columns=genes).groupby(case[test]).mean()
    np.testing.assert_allclose(got[[f"true:{g}" for g in genes]], truth, rtol=1e-6)


def test_case_level_table_gives_each_slide_its_case_target(cohort, tmp_path):
    table = read_table(cohort["table"])
    case_table = table.groupby(table.index.str.split("-").str[0]).mean()
    case_table.index.name = "patient_id"
    case_table.to_parquet(tmp_path / "cases.parquet")
    m = fit_bulk_task(
        "t", _bulk({"genes": {"list": ["G0", "G5"]}, "split": {"n_folds": 3, "n_repeats": 1}},
                   tmp_path / "cases.parquet"),
        cohort["sheet"], "enc-a", "mean", "mlp", {"epochs": 2, "hidden": 8},
        tmp_path / "m.parquet", tmp_path / "p.parquet", stores=[cohort["stores"]["enc-a"]],
    )  # fmt: skip
    pred = pd.read_parquet(tmp_path / "p.parquet")
    g = m["gene"].iloc[0]
    np.testing.assert_allclose(
        pred.set_index("case")[f"true:{g}"].sort_index(),
        np.log2(case_table[g] + 1).loc[sorted(pred["case"])],
    )


def test_abmil_and_mean_both_learn_the_signal(cohort, tmp_path):
    means = {}
    task = {"split": {"scheme": "case-kfold", "n_folds": 2, "n_repeats": 1}}
    for agg in ("mean", "abmil"):
        m, _ = _fit(cohort, tmp_path / agg, agg=agg, task=task, params=LEARN)
        assert set(m["head"]) == {f"{agg}-mlp"}
        means[agg] = m["pearson"].mean()
    assert means["mean"] > 0.3 and means["abmil"] > 0.3, means


def test_streamed_abmil_equals_in_memory_training(cohort):
    slides = sorted(cohort["bags"]["enc-a"])
    y = np.random.default_rng(1).normal(size=(len(slides), 3)).astype(np.float32)
    whole = SlideBags.open([cohort["stores"]["enc-a"]], memory_mb=64)
    small = SlideBags.open([cohort["stores"]["enc-a"]], memory_mb=7 * 8 * 4 / 2**20)
    assert small.chunk_rows == 7 and max(small.size(s) for s in slides) > 7
    preds = []
    for bags in (whole, small):
        est = ABMILRegressor(attention_dim=8, hidden=16, epochs=3, batch_size=4, lr=1e-2,
                             standardize=True)  # fmt: skip
        preds.append(est.fit(slides, y, bags=bags).predict(slides, bags=bags))
    assert whole.max_rows_read > 7 and small.max_rows_read == 7
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-4, atol=1e-5)


def test_abmil_attention_gradient_is_exact():
    import torch

    from histofuse.bulk.heads import GatedAttention

    torch.manual_seed(0)
    x = torch.randn(50, 6)
    g = torch.randn(6)
    att = GatedAttention(6, 4)
    z = (torch.softmax(att(x), 0)[:, None] * x).sum(0)
    full = torch.autograd.grad(z @ g, list(att.parameters()))
    est = ABMILRegressor()
    est.attention_, est.scale_ = att, None

    class Bags:  # the SlideBags interface over an in-memory bag, in chunks of 9 tiles
        dim = 6

        def chunks(self, slide):
            yield from (x[i : i + 9].numpy() for i in range(0, 50, 9))

    zs, lse = est._pool(Bags(), "s")
    np.testing.assert_allclose(zs, z.detach(), rtol=1e-5, atol=1e-6)
    att.zero_grad()
    est._attention_backward(Bags(), "s", zs, lse, g, {})
    for a, p in zip(full, att.parameters(), strict=True):
        np.testing.assert_allclose(p.grad, a, rtol=1e-4, atol=1e-6)


def test_feature_set_of_two_encoders_runs_fusion_heads(cohort, tmp_path):
    m, _ = _fit(cohort, tmp_path, head="concat", stores=("enc-a", "enc-b"),
                params={"epochs": 3})  # fmt: skip
    assert set(m["features"]) == {"enc-a+enc-b"} and set(m["head"]) == {"mean-concat"}
    meta = json.loads(__import__("pyarrow.parquet").parquet.read_schema(tmp_path / "m.parquet")
                      .metadata[b"histofuse"])  # fmt: skip
    assert meta["blocks"] == [8, 6] and meta["encoders"] == ["enc-a", "enc-b"]
    m, _ = _fit(cohort, tmp_path, agg="abmil", head="self-attn-released",
                stores=("enc-a", "enc-b"), params={"epochs": 2, "embed_dim": 16,
                                                    "num_heads": 2})  # fmt: skip
    assert set(m["head"]) == {"abmil-self-attn-released"}


def test_slide_embedding_files_are_a_feature_set(cohort, tmp_path):
    slides = sorted(cohort["bags"]["enc-a"])
    files = []
    for enc in ("enc-a", "enc-b"):
        emb = pd.DataFrame({s: cohort["bags"][enc][s].mean(0) for s in slides}).T
        emb.index.name = "sample_id"
        files.append(tmp_path / f"{enc}.csv")
        emb.to_csv(files[-1])
    m = fit_bulk_task(
        "t", _bulk({"genes": {"top_k": 4}, "split": {"n_folds": 3, "n_repeats": 1}}, cohort["table"]),
        cohort["sheet"], "slide-enc", "slide", "cross-attn-released",
        {"epochs": 2, "embed_dim": 8, "num_heads": 2, "latent_dim": 8},
        tmp_path / "m.parquet", tmp_path / "p.parquet", embeddings=files,
    )  # fmt: skip
    assert set(m["head"]) == {"slide-cross-attn-released"}
    pd.DataFrame({"sample_id": ["C0-S0"], "d0": [1.0]}).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(HistofuseError, match="no row for slides"):
        fit_bulk_task(
            "t", _bulk({}, cohort["table"]), cohort["sheet"], "x", "slide", "mlp", {},
            tmp_path / "m.parquet", tmp_path / "p.parquet", embeddings=[tmp_path / "short.csv"],
        )  # fmt: skip


def test_loco_pooled_scoring_scores_every_case_once_per_repeat(cohort, tmp_path):
    task = {"split": {"scheme": "leave-one-case-out", "n_repeats": 2, "scoring": "pooled"}}
    m, pred = _fit(cohort, tmp_path, task=task, params={"epochs": 3})
    assert set(m["protocol"]) == {"case-pooled"}
    assert (m["n"] == N_CASES).all() and m.groupby(["seed", "fold"]).ngroups == 2
    # genes chosen once on all slides: every fold predicts, and the pool scores, the same 8
    task["genes"] = {"top_k": 8, "select_on": "all"}
    m, _ = _fit(cohort, tmp_path, task=task, params={"epochs": 3})
    assert (m.groupby("seed")["gene"].nunique() == 8).all()
    assert len(pred) == 2 * N_CASES
    with pytest.raises(HistofuseError, match="scoring: pooled"):
        _fit(cohort, tmp_path, task={"split": {"scheme": "leave-one-case-out"}})


def test_bad_inputs_name_the_fix(cohort, tmp_path):
    with pytest.raises(HistofuseError, match="no hyperparameter"):
        make_slide_head("mean", "mlp", {"nope": 1}, 1)
    with pytest.raises(HistofuseError, match="unknown bulk head"):
        make_slide_head("mean", "hest", {}, 1)
    pd.DataFrame({"id": ["zz"], "G0": [1.0]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(HistofuseError, match="neither sample_id nor patient_id"):
        fit_bulk_task("t", _bulk({}, tmp_path / "t.csv"), cohort["sheet"], "enc-a", "mean", "mlp", {},
                      tmp_path / "m", tmp_path / "p", stores=[cohort["stores"]["enc-a"]])  # fmt: skip


def test_slide_head_has_the_released_tail():
    est = SlideHead(strategy="self-attn-released", embed_dim=16, num_heads=2, latent_dim=32,
                    epochs=1)  # fmt: skip
    est.fit(np.random.default_rng(0).normal(size=(8, 10)), np.zeros((8, 3)))
    tail = est.module_.out
    assert [type(m).__name__ for m in tail] == ["Linear", "ReLU", "Linear"]
    assert (tail[0].in_features, tail[0].out_features, tail[2].out_features) == (16, 32, 3)
    mlp = SlideHead(strategy="mlp", epochs=1).fit(np.zeros((4, 10)), np.zeros((4, 3)))
    assert mlp.module_.body[0].out_features == 512  # d → 512 → ReLU → genes, as released


@pytest.mark.slow
def test_bags_above_the_memory_budget_stream_from_the_cache(tmp_path):
    """A 32768-tile, 1024-d bag (128 MiB as float32) read under a 2 MiB budget."""
    rng = np.random.default_rng(0)
    n, d = 32768, 1024
    bags = {f"S{i}": rng.normal(size=(n, d)).astype(np.float16) for i in range(2)}
    store = _write_store(tmp_path / "big.zarr", "enc-big", bags)
    del bags
    peaks = {}
    for budget in (2.0, 1024.0):
        sb = SlideBags.open([store], memory_mb=budget)
        tracemalloc.start()
        means = sb.mean_pool(["S0"])
        peaks[budget] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert sb.max_rows_read == min(n, budget_rows(budget, d))
    full = n * d * 4
    assert peaks[2.0] < full / 2 < peaks[1024.0], peaks
    assert np.isfinite(means).all()
    # ABMIL trains on the two big bags under the small budget with one chunk in flight per read
    # (after a tiny fit, so torch's lazy imports are not counted).
    sb = SlideBags.open([store], memory_mb=2.0)
    ABMILRegressor(attention_dim=2, hidden=2, epochs=1).fit(["S0"], np.zeros((1, 1)), bags=sb)
    tracemalloc.start()
    ABMILRegressor(attention_dim=8, hidden=8, epochs=1, batch_size=2).fit(
        ["S0", "S1"], np.zeros((2, 2)), bags=sb
    )
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sb.max_rows_read == budget_rows(2.0, d) < n
    assert peak < full / 2, peak


def test_plan_names_bulk_jobs_with_the_aggregation_in_the_head():
    from histofuse.plan.bulk import bulk_jobs
    from histofuse.plan.paths import bulk_metrics as bulk_metrics_path

    sets = {"a": ["a"], "b": ["b"], "a+b": ["a", "b"]}
    spec = {"table": "t.csv", "heads": {"mlp": {}, "concat": {}},
            "slide_embeddings": {"titan": ["t.pt.csv"], "both": ["t.csv", "p.csv"]}}  # fmt: skip
    jobs = bulk_jobs({"bulk": {"x": spec}}, sets)
    assert ("x", "a+b", "abmil", "concat") in jobs and ("x", "a", "mean", "concat") not in jobs
    assert ("x", "both", "slide", "concat") in jobs and (
        "x",
        "titan",
        "slide",
        "concat",
    ) not in jobs
    assert len(jobs) == 3 * 2 + 1 * 2 + 1 + 2
    assert bulk_metrics_path(*jobs[0]) == "results/bulk/metrics/x/a/mean-mlp.parquet"
    with pytest.raises(HistofuseError, match="not feature sets"):
        bulk_jobs({"bulk": {"x": {**spec, "feature_sets": ["c"]}}}, sets)
    with pytest.raises(HistofuseError, match="rename it"):
        bulk_jobs({"bulk": {"x": {**spec, "slide_embeddings": {"a": ["f"]}}}}, sets)


def test_cli_bulk_fit_reports_bad_input_in_one_line(cohort, tmp_path, capsys):
    from histofuse.cli import main

    args = ["bulk-fit", "--task", "t", "--task-json", "{}", "--samples", str(cohort["sheet"]),
            "--table", str(tmp_path / "missing.csv"), "--features", "enc-a", "--aggregation",
            "mean", "--stores", str(cohort["stores"]["enc-a"]), "--head", "mlp",
            "--metrics", str(tmp_path / "m.parquet"), "--predictions", str(tmp_path / "p.parquet")]  # fmt: skip
    assert main(args) == 2
    assert "missing.csv does not exist" in capsys.readouterr().err
    args[args.index("--table") + 1] = str(cohort["table"])
    args[args.index("--task-json") + 1] = json.dumps({"split": {"n_folds": 2, "n_repeats": 1}})
    assert main([*args, "--head-params", json.dumps({"epochs": 1, "hidden": 8})]) == 0
    assert set(pd.read_parquet(tmp_path / "m.parquet")["head"]) == {"mean-mlp"}


def test_task_params_leave_out_head_settings():
    from histofuse.plan.bulk import bulk_task_json

    spec = {"table": "t.csv", "heads": {"mlp": {}}, "abmil": {"attention_dim": 8}, "seed": 3}
    assert json.loads(bulk_task_json(spec)) == {"seed": 3}


def test_missing_bulk_table_stops_at_parse_time(tmp_path):
    from histofuse.plan.bulk import check_bulk_tables

    config = {"bulk": {"x": {"table": str(tmp_path / "b.csv")}}}
    with pytest.raises(HistofuseError, match=r"`bulk.x.table`: \S*b.csv does not exist"):
        check_bulk_tables(config, set())
    check_bulk_tables(config, {str(tmp_path / "b.csv")})  # made by the demo job
    (tmp_path / "b.csv").write_text("id,G0\n")
    check_bulk_tables(config, set())
