"""Out-of-core heads: features larger than the memory budget are streamed from the cache."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from histofuse import settings
from histofuse.cache import FeatureStoreWriter
from histofuse.errors import HistofuseError
from histofuse.evaluation.features import load_feature_set
from histofuse.fit import fit_task
from histofuse.heads.probes import make_head
from histofuse.heads.streaming import (
    LazyFeatures,
    batch_bounds,
    batch_rows_for,
    exceeds_budget,
    fit_predict,
)

TASK = {
    "genes": {"top_k": 12, "select_on": "train"},
    "split": {"scheme": "patient-kfold", "n_folds": 3},
    "seed": 1,
}


def write_cohort(
    root: Path, spots: int, widths: dict[str, int], genes: int = 16, seed: int = 0
) -> tuple[Path, list[Path]]:
    """Three patients × two samples with a shared latent signal behind features and counts.

    Writes ``samples.tsv``, one ``.h5ad`` per sample and one float16 store per encoder (the
    stores list samples in reverse order, so the fit stage has to reorder rows).
    """
    rng = np.random.default_rng(seed)
    mix = {e: rng.normal(size=(8, d)) for e, d in widths.items()}
    load = rng.normal(size=(8, genes)) * 0.4
    rows, data = [], {}
    (root / "st").mkdir(parents=True, exist_ok=True)
    for p in range(3):
        for s in range(2):
            name = f"P{p}-S{s}"
            latent = rng.normal(size=(spots, 8))
            barcodes = np.array([f"{name}-{i:06d}" for i in range(spots)])
            counts = rng.poisson(np.exp(1.0 + latent @ load)).astype(np.float32)
            ad.AnnData(
                X=counts,
                obs=pd.DataFrame(index=barcodes),
                var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]),
            ).write_h5ad(root / "st" / f"{name}.h5ad")
            (root / f"{name}.tiff").touch()  # never opened: the fit stage reads the cache
            rows.append({"sample_id": name, "patient_id": f"P{p}", "slide": f"{name}.tiff"})
            rows[-1]["expression"] = f"st/{name}.h5ad"
            data[name] = (latent, barcodes)
    sheet = root / "samples.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    stores = []
    for enc, d in widths.items():
        store = root / "features" / enc / "0000.zarr"
        prov = {"cache_key": f"key-{enc}", "encoder": {"name": enc}}
        with FeatureStoreWriter(store, prov) as w:
            for name in sorted(data, reverse=True):
                latent, barcodes = data[name]
                x = latent @ mix[enc] + rng.normal(size=(len(latent), d))
                coords = np.stack([np.arange(len(latent))] * 2, axis=1)
                w.add(name, x.astype(np.float32), coords, barcodes)
        stores.append(store)
    return sheet, stores


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("stream"), 150, {"enc-a": 24, "enc-b": 40})


def test_lazy_view_reads_what_memory_holds(cohort):
    sheet, stores = cohort
    samples = pd.read_csv(sheet, sep="\t")["sample_id"].tolist()
    x, index, encoders, widths = load_feature_set(stores, samples, with_blocks=True)
    lazy, index2, *_ = load_feature_set(stores, samples, with_blocks=True, memory_budget_mb=0.01)
    assert isinstance(x, np.ndarray) and isinstance(lazy, LazyFeatures)
    assert (
        encoders == ["enc-a", "enc-b"]
        and widths == [24, 40]
        and lazy.shape == x.shape
        and lazy.nbytes == x.nbytes
    )
    pd.testing.assert_frame_equal(index, index2)
    sel = np.random.default_rng(0).permutation(len(x))[:200]
    np.testing.assert_array_equal(lazy[sel].read(), x[sel])
    np.testing.assert_array_equal(np.concatenate(list(lazy.batches(97, min_rows=50))), x)


def test_batch_bounds_cover_rows_and_merge_a_short_tail():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(10, 4, min_rows=3) == [(0, 4), (4, 10)]
    assert batch_bounds(3, 8) == [(0, 3)]
    assert batch_rows_for(64, 256) == 1024  # 1/64 of 64 MiB in rows of 256 float32
    assert batch_rows_for(0.001, 256) == 64  # never fewer than 64 rows per read
    assert exceeds_budget(1000, 256, 0.9) and not exceeds_budget(1000, 256, 1.0)
    assert not exceeds_budget(10**9, 256, None)


@pytest.mark.parametrize(
    ("head", "params", "tol"),
    [
        ("hest", {"n_components": 16}, 0.02),
        ("linear", {"epochs": 5, "batch_size": 32, "lr": 1e-3, "standardize": True}, 0.05),
        (
            "gated",
            {"embed_dim": 16, "epochs": 20, "batch_size": 32, "lr": 3e-3, "standardize": True},
            0.05,
        ),
    ],
)
def test_streamed_heads_match_the_in_memory_fit(cohort, head, params, tol):
    sheet, stores = cohort
    samples = pd.read_csv(sheet, sep="\t")["sample_id"].tolist()
    x, _, _, widths = load_feature_set(stores, samples, with_blocks=True)
    lazy = load_feature_set(stores, samples, memory_budget_mb=0.01)[0]
    rng = np.random.default_rng(1)
    y = x[:, :6] @ rng.normal(size=(6, 5)) + rng.normal(size=(len(x), 5))
    train, test = np.arange(600), np.arange(600, len(x))

    def run(features, rows):
        est = make_head(head, params, seed=3)
        if "blocks" in est.get_params():
            est.set_params(blocks=widths)
        return fit_predict(est, features, y, train, test, rows)

    mem, streamed = run(x, None), run(lazy, 100)
    assert streamed.shape == mem.shape == (len(test), 5)
    r_mem = [np.corrcoef(mem[:, g], y[test, g])[0, 1] for g in range(5)]
    r_str = [np.corrcoef(streamed[:, g], y[test, g])[0, 1] for g in range(5)]
    assert min(r_mem) > 0.3  # the signal is learnable, so the comparison means something
    np.testing.assert_allclose(r_str, r_mem, atol=tol)
    assert not np.allclose(streamed, mem)  # really a different (streamed) fit


@pytest.mark.parametrize(("width", "rtol", "pearson_tol"), [(16, 1e-5, 1e-6), (64, 1e-3, 1e-4)])
def test_streamed_hest_probe_matches_the_in_memory_probe(cohort, width, rtol, pearson_tol):
    """Exact PCA from the streamed covariance, lsqr on the R factor of [Z | y]: HEST's numbers.

    700 training rows of 64 features: scikit-learn's PCA solves exactly (``covariance_eigh``),
    as the streamed one does. What is left is rounding (the in-memory PCA runs in float32) and
    lsqr stopping at its tolerance on a slightly different problem; it grows at full width,
    where the smallest components enter.
    """
    sheet, stores = cohort
    samples = pd.read_csv(sheet, sep="\t")["sample_id"].tolist()
    x = load_feature_set(stores, samples)[0]
    lazy = load_feature_set(stores, samples, memory_budget_mb=0.01)[0]
    rng = np.random.default_rng(1)
    y = x[:, :6] @ rng.normal(size=(6, 5)) + rng.normal(size=(len(x), 5))
    train, test = np.arange(700), np.arange(700, len(x))
    params = {"n_components": width}
    mem = fit_predict(make_head("hest", params), x, y, train, test)
    for rows in (64, 128):
        streamed = fit_predict(make_head("hest", params), lazy, y, train, test, rows)
        np.testing.assert_allclose(streamed, mem, rtol=0, atol=rtol * np.abs(mem).max())
        r_mem = [np.corrcoef(mem[:, g], y[test, g])[0, 1] for g in range(5)]
        r_str = [np.corrcoef(streamed[:, g], y[test, g])[0, 1] for g in range(5)]
        np.testing.assert_allclose(r_str, r_mem, rtol=0, atol=pearson_tol)


def test_heads_that_cannot_stream_say_so(cohort):
    sheet, stores = cohort
    samples = pd.read_csv(sheet, sep="\t")["sample_id"].tolist()
    lazy = load_feature_set(stores, samples, memory_budget_mb=0.01)[0]
    y = np.zeros((len(lazy), 2))
    for head in ("ridge", "hest-alphacv"):
        with pytest.raises(HistofuseError, match="memory_budget_mb"):
            fit_predict(make_head(head), lazy, y, np.arange(500), np.arange(500, 600), 100)


def test_fit_stage_streams_over_budget_and_records_it(cohort, tmp_path):
    sheet, stores = cohort
    out = {}
    for budget in (None, 0.01):
        m = tmp_path / f"{budget}.parquet"
        out[budget] = fit_task(
            "t", settings.load(settings.Task, "tasks", TASK), sheet, stores, "enc-a+enc-b", "hest",
            {"n_components": 16},
            m, tmp_path / f"p{budget}.parquet", memory_budget_mb=budget,
        )  # fmt: skip
    a, b = out[None], out[0.01]
    assert len(a) == len(b) and a["gene"].tolist() == b["gene"].tolist()
    pooled = a["protocol"] == "hest-pooled"
    assert a.loc[pooled, "pearson"].mean() > 0.3
    np.testing.assert_allclose(b["pearson"], a["pearson"], atol=0.02)
    import pyarrow.parquet as pq

    streamed = [
        json.loads(pq.read_schema(tmp_path / f"{b_}.parquet").metadata[b"histofuse"])["streamed"]
        for b_ in (None, 0.01)
    ]
    assert streamed == [False, True]


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import anndata, dask.array, numpy, pyarrow.parquet, scipy.linalg, sklearn.decomposition, torch
    import zarr
    import histofuse.heads.fusion, histofuse.heads.streaming, histofuse.evaluation.metrics
    from histofuse import settings
    from histofuse.fit import fit_task

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024  # MiB

    small, big, out, head, params, budget = sys.argv[1:7]
    params, budget = json.loads(params), float(budget)
    task = settings.load(settings.Task, "tasks", json.loads(sys.argv[7]))

    def run(sheet, stores, tag, budget):
        return fit_task("t", task, sheet, stores, "f", head, params,
                        f"{out}/{tag}.parquet", f"{out}/{tag}-pred.parquet", budget)

    # Warm-up on the small cohort, streamed and in memory, so lazy imports and first-call
    # allocations are not counted below.
    stores = lambda root: sorted(str(p) for p in __import__("pathlib").Path(root).glob("features/*/*.zarr"))
    run(f"{small}/samples.tsv", stores(small), "warm-s", 0.001)
    run(f"{small}/samples.tsv", stores(small), "warm-m", None)
    result = {}
    for tag, b in (("streamed", budget), ("memory", None)):
        base = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now
        run(f"{big}/samples.tsv", stores(big), tag, b)
        result[tag] = status("VmHWM") - base
    print(json.dumps(result))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("head", "params"),
    [
        ("hest", {"n_components": 64, "cap_components": True}),  # the warm-up has 48 features
        ("concat", {"epochs": 2, "batch_size": 256, "lr": 1e-3, "standardize": True}),
    ],
)
def test_features_over_budget_train_under_budget(tmp_path, head, params):
    """A feature set 1.8 times the budget fits with peak memory (RSS) under the budget."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure peak memory")
    budget = 224.0
    widths = {"enc-a": 1536, "enc-b": 1024}
    small = write_cohort(tmp_path / "small", 100, {"enc-a": 32, "enc-b": 16})
    big = write_cohort(tmp_path / "big", 7000, widths)
    n = 6 * 7000
    feature_mb = n * sum(widths.values()) * 4 / 2**20
    assert feature_mb > 1.8 * budget
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    two_folds = {**TASK, "split": {"scheme": "patient-kfold", "n_folds": 2}}
    proc = subprocess.run(
        [
            sys.executable, "-c", PEAK_SCRIPT, str(small[0].parent), str(big[0].parent),
            str(tmp_path), head, json.dumps(params), str(budget), json.dumps(two_folds),
        ],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{head}: features {feature_mb:.0f} MiB, budget {budget:.0f} MiB, peak {peak}")
    assert peak["streamed"] < budget
    assert peak["memory"] > feature_mb  # the in-memory fit holds the features: the probe works
    a = pd.read_parquet(tmp_path / "memory.parquet")
    b = pd.read_parquet(tmp_path / "streamed.parquet")
    pooled = a["protocol"] == "hest-pooled"
    assert a.loc[pooled, "pearson"].mean() > 0.3
    np.testing.assert_allclose(b["pearson"], a["pearson"], atol=0.05)


def test_fit_verb_passes_the_budget(cohort, tmp_path):
    import pyarrow.parquet as pq

    from histofuse.cli import main

    sheet, stores = cohort
    out = tmp_path / "m.parquet"
    args = ["fit", "--task", "t", "--task-json", json.dumps(TASK), "--samples", str(sheet)]
    args += ["--stores", *map(str, stores), "--features", "enc-a+enc-b", "--head", "hest"]
    args += ["--head-params", '{"n_components": 8}', "--metrics", str(out)]
    args += ["--predictions", str(tmp_path / "p.parquet"), "--memory-budget-mb", "0.05"]
    assert main(args) == 0
    meta = json.loads(pq.read_schema(out).metadata[b"histofuse"])
    assert meta["streamed"] is True and len(pd.read_parquet(out)) > 0
