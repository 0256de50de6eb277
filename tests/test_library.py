"""The library a user finds: the README's three lines read a real cached encoder.

The store is embedded by the real embed stage (``tiny-vit`` on the CPU) from real spot tiles.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

README_SNIPPET = """\
import anndata, histofuse
table = histofuse.open_features("results/features/tiny-vit/0000.zarr")  # one store or a list
adata = anndata.AnnData(table.load(), obs=table.index.rename(index=str))  # numpy X, pandas obs
"""
"""The README's example, verbatim: it runs in a directory holding the store it names."""


@pytest.fixture(scope="module")
def store(small_tiles, tmp_path_factory) -> Path:
    from histofuse.embed import embed_shard

    out = tmp_path_factory.mktemp("library") / "results/features/tiny-vit/0000.zarr"
    embed_shard([small_tiles[s] for s in sorted(small_tiles)[:2]], "tiny-vit", out, device="cpu")
    return out


def test_the_readme_example_reads_a_store_into_anndata(store, small_tiles, monkeypatch):
    import pandas as pd

    monkeypatch.chdir(store.parents[2].parent)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no implicit index conversion or dtype surprise
        exec(compile(README_SNIPPET, "README.md", "exec"), scope)
    adata = scope["adata"]
    samples = sorted(small_tiles)[:2]
    n_tiles = sum(len(pd.read_parquet(small_tiles[s])) for s in samples)
    assert adata.shape == (n_tiles, 192)  # tiny-vit's width
    assert isinstance(adata.X, np.ndarray) and np.isfinite(adata.X).all()
    assert list(adata.obs.columns) == ["sample", "barcode", "x", "y"]
    assert adata.obs["sample"].unique().tolist() == samples
    assert adata.obs["barcode"].str.len().gt(0).all()


def test_one_path_is_one_store_not_its_characters(store):
    from histofuse import FeatureTable, open_features

    by_list = open_features([store]).load()
    for one in (store, str(store)):
        table = open_features(one)
        assert isinstance(table, FeatureTable)
        np.testing.assert_array_equal(table.load(), by_list)
    two = open_features((store, store))  # any iterable of paths, e.g. the shards of an encoder
    assert two.features.shape == (2 * len(by_list), by_list.shape[1])


def test_importing_histofuse_imports_no_heavy_library():
    code = (
        "import sys, histofuse\n"
        "heavy = [m for m in ('torch', 'zarr', 'dask', 'numpy', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert 'open_features' in dir(histofuse)\n"
        "histofuse.FeatureTable\n"
        "assert 'pandas' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_an_unknown_top_level_name_is_an_attribute_error():
    import histofuse

    with pytest.raises(AttributeError, match="no attribute 'open_feature'"):
        histofuse.open_feature  # noqa: B018
