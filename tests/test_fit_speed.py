"""A fit job's fixed costs: which libraries it imports, and how it reads its features.

The whole-sample read (no memory budget) must give the very values and index of the dask
gather it replaces, for every sample, a subset and encoders whose tiles are in another order;
a fit of a head that needs no torch must not import it.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from test_streaming import write_cohort

from histofuse.cache import FeatureStoreWriter, open_features
from histofuse.cache.reader import read_samples
from histofuse.errors import HistofuseError
from histofuse.evaluation.features import load_feature_set

SAMPLES = ["A", "B", "C", "D", "E"]


def _write(path, enc, samples, data, dtype, shuffle=None):
    """One store of ``enc`` with ``samples`` in that order (rows shuffled by ``shuffle``)."""
    with FeatureStoreWriter(
        path, {"cache_key": f"key-{enc}", "encoder": {"name": enc}}, dtype
    ) as w:
        for s in samples:
            x, barcodes = data[enc][s]
            order = shuffle.permutation(len(x)) if shuffle is not None else np.arange(len(x))
            coords = np.stack([order, order * 2], axis=1)
            w.add(s, x[order], coords, barcodes[order])
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """enc-a: float16 in two shards (A B C, then E D); enc-b: float32, one store, samples and
    each sample's tiles in another order."""
    root = tmp_path_factory.mktemp("fast-read")
    rng = np.random.default_rng(5)
    data = {}
    for enc, width in (("enc-a", 12), ("enc-b", 20)):
        data[enc] = {}
        for i, s in enumerate(SAMPLES):
            n = 40 + 7 * i
            barcodes = np.array([f"{s}-{j:04d}" for j in range(n)])
            data[enc][s] = (rng.normal(size=(n, width)).astype(np.float32), barcodes)
    return [
        _write(root / "enc-a" / "0000.zarr", "enc-a", ["A", "B", "C"], data, "float16"),
        _write(root / "enc-a" / "0001.zarr", "enc-a", ["E", "D"], data, "float16"),
        _write(root / "enc-b" / "0000.zarr", "enc-b", ["D", "B", "E", "A", "C"], data, "float32",
               shuffle=np.random.default_rng(9)),
    ]  # fmt: skip


def _expected(stores, samples):
    """Features of the samples' tiles as float32, taken by (sample, barcode) from each
    encoder's whole dask array, in the order of the first encoder's stores."""
    tables = [open_features(stores[:2]), open_features(stores[2:])]
    index = tables[0].index[tables[0].index["sample"].isin(samples)].reset_index(drop=True)
    key = pd.MultiIndex.from_frame(index[["sample", "barcode"]])
    parts = []
    for table in tables:
        own = pd.MultiIndex.from_frame(table.index[["sample", "barcode"]])
        parts.append(np.asarray(table.features.compute())[own.get_indexer(key)].astype(np.float32))
    return np.concatenate(parts, axis=1), index


@pytest.mark.parametrize("samples", [SAMPLES, ["B", "D"], ["E", "A", "C"]])
def test_whole_sample_read_equals_the_dask_gather(stores, samples):
    x, index, encoders, widths = load_feature_set(stores, samples, with_blocks=True)
    expected, expected_index = _expected(stores, samples)
    assert x.dtype == np.float32 and encoders == ["enc-a", "enc-b"] and widths == [12, 20]
    assert x.tobytes() == expected.tobytes()  # bit for bit
    pd.testing.assert_frame_equal(index, expected_index)
    # the streamed path (a budget the features fit in) reads the same, through dask
    within, index2, *_ = load_feature_set(stores, samples, memory_budget_mb=64)
    assert within.tobytes() == x.tobytes()
    pd.testing.assert_frame_equal(index2, index)


def test_lazy_reads_of_ranges_and_gathers_agree(stores):
    x = load_feature_set(stores, SAMPLES)[0]
    lazy = load_feature_set(stores, SAMPLES, memory_budget_mb=0.001)[0]
    n = len(x)
    for sel in (slice(0, n), slice(10, 90), np.arange(n)[::-1], np.r_[5:30, 60:70], [3]):
        assert lazy.read(sel).tobytes() == x[sel].tobytes()


def test_read_samples_refuses_stores_of_mixed_dtypes(stores, tmp_path):
    rng = np.random.default_rng(0)
    data = {"enc-a": {"F": (rng.normal(size=(9, 12)).astype(np.float32),
                            np.array([f"F-{j}" for j in range(9)]))}}  # fmt: skip
    other = _write(tmp_path / "0002.zarr", "enc-a", ["F"], data, "float32")
    with pytest.raises(HistofuseError, match="different widths or dtypes"):
        read_samples([stores[0], other], ["A", "F"])
    assert read_samples([stores[0]], ["nobody"]) is None


def test_the_whole_sample_read_builds_no_dask_graph(stores):
    code = f"""
        import sys
        from histofuse.evaluation.features import load_feature_set
        x = load_feature_set({list(map(str, stores))!r}, {SAMPLES!r})[0]
        print("ROWS", len(x), "DASK", "dask" in sys.modules)
        """
    done = _driver(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DASK False" in done.stdout and "ROWS 270" in done.stdout, done.stdout


def _driver(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600
    )


def _fit_args(sheet, stores, out, head, params):
    task = {"genes": {"top_k": 6}, "split": {"scheme": "patient-kfold", "n_folds": 3}, "seed": 1}
    return [
        "fit", "--task", "t", "--task-json", json.dumps(task), "--samples", str(sheet),
        "--stores", *map(str, stores), "--features", "enc-a+enc-b", "--head", head,
        "--head-params", json.dumps(params),
        "--metrics", str(out / f"{head}.parquet"), "--predictions", str(out / f"{head}-p.parquet"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("fit-imports"), 60, {"enc-a": 16, "enc-b": 24})


def test_a_fit_of_heads_without_torch_does_not_import_torch(cohort, tmp_path):
    sheet, stores = cohort
    runs = [
        _fit_args(sheet, stores, tmp_path, "hest", {"n_components": 8}),
        _fit_args(sheet, stores, tmp_path, "ridge", {"alpha": 10.0}),
    ]
    code = f"""
        import sys
        from histofuse.cli import main
        for argv in {runs!r}:
            assert main(argv) == 0, argv
        print("TORCH", "torch" in sys.modules)
        """
    done = _driver(code)
    assert done.returncode == 0, done.stderr[-3000:]
    for head in ("hest", "ridge"):
        assert len(pd.read_parquet(tmp_path / f"{head}.parquet")) > 0
    assert "TORCH False" in done.stdout, done.stdout


def test_a_torch_head_still_fits(cohort, tmp_path):
    sheet, stores = cohort
    argv = _fit_args(sheet, stores, tmp_path, "linear", {"epochs": 3, "batch_size": 32})
    code = f"""
        import sys
        from histofuse.cli import main
        assert main({argv!r}) == 0
        print("TORCH", "torch" in sys.modules)
        """
    done = _driver(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TORCH True" in done.stdout
    metrics = pd.read_parquet(tmp_path / "linear.parquet")
    assert set(metrics["head"]) == {"linear"} and metrics["pearson"].notna().any()
