"""The embed and fit stages on the small generated cohort, without Snakemake."""

import numpy as np
import pandas as pd
import pytest
import torch

from histofuse import settings
from histofuse.cache import open_features, read_provenance
from histofuse.embed import embed_shard
from histofuse.encoders.model import create_encoder
from histofuse.fit import fit_task
from histofuse.slides.reader import TileDataset
from histofuse.slides.tiling import read_tiles


@pytest.fixture(scope="module")
def stores(small_tiles, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    paths = {}
    for enc in ("tiny-vit", "tiny-cnn"):
        paths[enc] = out / enc / "0000.zarr"
        embed_shard(list(small_tiles.values()), enc, paths[enc], batch_size=16, device="cpu")
    return paths


def test_store_holds_every_tile_with_provenance(stores, small_tiles):
    table = open_features([stores["tiny-vit"]])
    n = sum(len(read_tiles(p)[0]) for p in small_tiles.values())
    assert table.features.shape == (n, 192)
    assert set(table.index["sample"]) == set(small_tiles)
    prov = read_provenance(stores["tiny-vit"])
    for key in (
        "cache_key",
        "encoder",
        "weights_sha256",
        "transform",
        "pooling",
        "tiling",
        "versions",
        "timings",
        "dtype",
    ):
        assert key in prov
    assert prov["encoder"]["name"] == "tiny-vit" and prov["dtype"] == "float16"
    assert prov["tiling"]["patch_um"] == 56.0
    assert prov["cache_key"] != read_provenance(stores["tiny-cnn"])["cache_key"]


def test_cached_features_equal_a_direct_forward(stores, small_tiles):
    sample, path = sorted(small_tiles.items())[0]
    tiles, meta = read_tiles(path)
    ds = TileDataset(tiles, meta)
    x = torch.from_numpy(np.stack([ds[i] for i in range(4)]))
    with torch.inference_mode():
        direct = create_encoder("tiny-cnn")(x).numpy()
    table = open_features([stores["tiny-cnn"]])
    rows = np.flatnonzero(table.index["sample"] == sample)[:4]
    cached = table.features[rows].compute().astype(np.float32)
    np.testing.assert_allclose(cached, direct, rtol=2e-3, atol=2e-3)
    assert table.index.loc[rows, "barcode"].tolist() == tiles["barcode"][:4].tolist()


def test_fit_writes_per_fold_gene_metrics(stores, small_cohort, tmp_path):
    task = {
        "genes": {"top_k": 10, "select_on": "all"},
        "split": {"scheme": "patient-kfold", "n_folds": 5},
    }
    m = fit_task(
        "t",
        settings.load(settings.Task, "tasks", task),
        small_cohort,
        [stores["tiny-vit"], stores["tiny-cnn"]],
        "tiny-cnn+tiny-vit",
        "hest",
        {"cap_components": True},  # 58 training spots: fewer than 256 components
        tmp_path / "m.parquet",
        tmp_path / "p.parquet",
    )
    assert set(m["protocol"]) == {"hest-pooled", "per-sample"}
    assert (m.loc[m["protocol"] == "hest-pooled", "sample"] == "").all()
    written, m = m, m[m["protocol"] == "hest-pooled"]
    assert m["fold"].nunique() == 2  # two patients → two folds
    assert m.groupby("fold")["gene"].nunique().eq(10).all()
    assert m["pearson"].notna().all() and m["pearson"].between(-1, 1).all()
    assert m["pearson"].mean() > 0.2  # expression depends on the image
    saved = pd.read_parquet(tmp_path / "m.parquet")
    pd.testing.assert_frame_equal(saved, written)
    pred = pd.read_parquet(tmp_path / "p.parquet")
    # every spot predicted exactly once, by the fold that held its patient out
    assert not pred.duplicated(["sample", "barcode"]).any()
    assert len(pred) == open_features([stores["tiny-vit"]]).features.shape[0]


def test_fit_rejects_unknown_samples(stores, small_cohort, tmp_path):
    from histofuse.errors import HistofuseError

    with pytest.raises(HistofuseError, match="not in the sheet"):
        fit_task(
            "t",
            settings.load(settings.Task, "tasks", {"samples": ["ghost"]}),
            small_cohort,
            [stores["tiny-vit"]],
            "tiny-vit",
            "hest",
            {},
            tmp_path / "m.parquet",
            tmp_path / "p.parquet",
        )
