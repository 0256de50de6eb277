"""The embed stage streams all samples of a shard through one loader and splits them back."""

import numpy as np
import torch

from histofuse.cache import open_features, read_manifest
from histofuse.embed import embed_shard
from histofuse.encoders.model import create_encoder
from histofuse.slides.reader import TileDataset
from histofuse.slides.tiling import read_tiles, write_tiles


def test_batches_spanning_samples_and_empty_samples_map_back(small_tiles, tmp_path):
    first, second = sorted(small_tiles)[:2]
    table, meta = read_tiles(small_tiles[first])
    empty = tmp_path / "EMPTY.parquet"
    write_tiles(table.iloc[:0], {**meta, "sample": "EMPTY"}, empty)
    order = [small_tiles[first], empty, small_tiles[second]]
    n_first = len(table)
    batch = 7 if n_first % 7 else 6  # a batch that holds tiles of both samples
    store = tmp_path / "s.zarr"
    embed_shard(order, "tiny-cnn", store, batch_size=batch, num_workers=1, device="cpu")

    man = read_manifest(store)
    assert man["samples"] == {first: n_first, "EMPTY": 0, second: len(read_tiles(order[2])[0])}
    feats = open_features([store])
    assert feats.index["sample"].tolist() == [
        s for s, k in man["samples"].items() for _ in range(k)
    ]
    # the tiles on both sides of the sample boundary equal a direct forward of the same tiles
    model = create_encoder("tiny-cnn")
    for sample, rows in ((first, range(n_first - 3, n_first)), (second, range(3))):
        tiles, m = read_tiles(small_tiles[sample])
        ds = TileDataset(tiles, m)
        with torch.inference_mode():
            direct = model(torch.from_numpy(np.stack([ds[i] for i in rows]))).numpy()
        at = np.flatnonzero(feats.index["sample"] == sample)[list(rows)]
        got = feats.load()[at].astype(np.float32)
        np.testing.assert_allclose(got, direct, rtol=2e-3, atol=2e-3)
