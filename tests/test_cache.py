import json

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, TransposeCodec

from histofuse.cache import (
    FeatureStoreWriter,
    manifest_path,
    open_features,
    read_manifest,
    read_provenance,
)
from histofuse.errors import HistofuseError


def _write(path, key="k1", samples=("A", "B"), dim=8, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    with FeatureStoreWriter(path, {"cache_key": key, "encoder": {"name": "e"}}) as w:
        for i, s in enumerate(samples):
            n = 5 + i
            f = rng.normal(size=(n, dim)).astype(np.float32)
            c = rng.integers(0, 1000, size=(n, 2))
            b = np.array([f"{s}-{j}" for j in range(n)])
            w.add(s, f, c, b)
            data[s] = (f, c, b)
    return data


def test_round_trip(tmp_path):
    store = tmp_path / "enc" / "0000.zarr"
    data = _write(store)
    table = open_features([store])
    x = table.features.compute()
    assert x.dtype == np.float16
    expected = np.concatenate([data[s][0] for s in ("A", "B")])
    np.testing.assert_allclose(x, expected, rtol=1e-3, atol=1e-3)
    assert table.index["sample"].tolist() == ["A"] * 5 + ["B"] * 6
    assert table.index["barcode"].tolist()[:2] == ["A-0", "A-1"]
    assert (
        table.index[["x", "y"]].to_numpy().tolist()
        == np.concatenate([data["A"][1], data["B"][1]]).tolist()
    )
    man = read_manifest(store)
    assert man["samples"] == {"A": 5, "B": 6} and man["cache_key"] == "k1"
    prov = read_provenance(store)
    assert prov["dtype"] == "float16" and prov["encoder"] == {"name": "e"}
    assert zarr.open_group(str(store), mode="r").metadata.zarr_format == 3


def test_float32_option(tmp_path):
    store = tmp_path / "s.zarr"
    with FeatureStoreWriter(store, {"cache_key": "k"}, dtype="float32") as w:
        w.add("A", np.ones((2, 3)), np.zeros((2, 2)))
    assert open_features([store]).features.dtype == np.float32


def test_failure_mid_write_leaves_nothing(tmp_path):
    store = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError), FeatureStoreWriter(store, {"cache_key": "k"}) as w:
        w.add("A", np.ones((2, 3)), np.zeros((2, 2)))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_store_without_manifest_is_never_read(tmp_path):
    store = tmp_path / "s.zarr"
    _write(store)
    manifest_path(store).unlink()
    with pytest.raises(HistofuseError, match="unfinished"):
        open_features([store])


def test_mixed_provenance_is_refused(tmp_path):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    _write(a, key="k1", samples=("A",))
    _write(b, key="k2", samples=("B",))
    with pytest.raises(HistofuseError, match="cache key k2, expected k1"):
        open_features([a, b])
    with pytest.raises(HistofuseError, match="expected k9"):
        open_features([a], cache_key="k9")


def test_manifest_disagreeing_with_store_is_refused(tmp_path):
    store = tmp_path / "s.zarr"
    _write(store)
    man = json.loads(manifest_path(store).read_text())
    man["cache_key"] = "other"
    manifest_path(store).write_text(json.dumps(man))
    with pytest.raises(HistofuseError, match="disagrees with its manifest"):
        open_features([store])


def test_mismatched_lengths_rejected(tmp_path):
    with (
        pytest.raises(ValueError, match="differ in length"),
        FeatureStoreWriter(tmp_path / "s.zarr", {"cache_key": "k"}) as w,
    ):
        w.add("A", np.ones((3, 2)), np.zeros((2, 2)))


def test_load_and_blocks_match_the_written_features(tmp_path):
    """The in-memory read, and dask blocks split across and within samples, give the same rows."""
    from histofuse.cache import chunks, reader

    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    data = _write(a, samples=("A", "B", "C"), dim=16)
    data.update(_write(b, samples=("D",), dim=16, seed=1))
    expected = np.concatenate([data[s][0] for s in "ABCD"]).astype(np.float16)
    table = open_features([a, b])
    np.testing.assert_array_equal(table.load(), expected)
    np.testing.assert_array_equal(table.features.compute(), expected)
    assert table.index["sample"].tolist() == ["A"] * 5 + ["B"] * 6 + ["C"] * 7 + ["D"] * 5
    # a small cap puts every sample (one chunk each) in its own block; a large one merges them
    arrays = [
        zarr.open_group(str(a), mode="r")[s]["features"]._async_array for s in ("A", "B", "C")
    ]
    blocks = reader._blocks(arrays, max_bytes=4 * 16 * 2)
    rows = [sum(stop - start for _, start, stop in blk) for blk in blocks]
    assert rows == [5, 6, 7]
    assert [len(blk) for blk in reader._blocks(arrays, max_bytes=1 << 20)] == [3]
    got = np.concatenate([chunks.read_block(blk, 16, "float16") for blk in blocks])
    np.testing.assert_array_equal(got, expected[:18])


def test_store_metadata_is_consolidated(tmp_path):
    store = tmp_path / "s.zarr"
    _write(store)
    meta = json.loads((store / "zarr.json").read_text())
    nodes = meta["consolidated_metadata"]["metadata"]
    assert {"A/features", "A/coords", "B/barcodes"} <= set(nodes)


def _zarr_array(root, name, data, **layout):
    array = root.create_array(name, shape=data.shape, dtype=data.dtype, **layout)
    array[...] = data
    return zarr.open_group(root.store, mode="r")[name]._async_array


@pytest.mark.parametrize(
    ("layout", "direct"),
    [
        ({"chunks": (4, 3), "shards": (12, 3), "compressors": None}, True),
        ({"chunks": (4, 3), "compressors": None}, True),
        ({"chunks": (25, 3), "compressors": None}, True),
        ({"chunks": (4, 3), "shards": (8, 3)}, False),  # compressed: through zarr
        ({"chunks": (4, 1), "compressors": None}, False),  # chunks split rows
        ({"chunks": (4, 3), "compressors": None, "filters": [TransposeCodec(order=(1, 0))]}, False),
        ({"chunks": (4, 3), "compressors": None, "serializer": BytesCodec(endian="big")}, False),
    ],
)
@pytest.mark.parametrize("dtype", ["float16", "float32", "int64"])
def test_direct_row_reads_equal_zarr_reads(tmp_path, layout, direct, dtype):
    """Raw layouts are read straight from the files, others through zarr; rows agree either way,
    for every row range, with edge chunks and with chunks and shards never written (zeros)."""
    from histofuse.cache import chunks

    data = np.arange(25 * 3).reshape(25, 3).astype(dtype) + 1
    data[4:8] = 0  # a whole chunk of fill values: not written (missing in the shard index)
    data[12:24] = 0  # a whole shard of fill values: no file at all when sharded by 12
    array = _zarr_array(zarr.open_group(str(tmp_path / "s.zarr"), mode="w"), "f", data, **layout)
    assert (chunks.raw_rows(array) is not None) == direct
    for start, stop in [(0, 25), (3, 9), (4, 8), (11, 13), (12, 24), (24, 25), (5, 5)]:
        got = chunks.read_block([(array, start, stop)], 3, dtype)
        np.testing.assert_array_equal(got, data[start:stop], err_msg=f"rows {start}-{stop}")


def test_samples_larger_than_a_shard_span_several_files(tmp_path, monkeypatch):
    """A sample of many chunks is written as shard files of SHARD_CHUNKS chunks; a whole read,
    the dask array and small streamed blocks all give the written rows."""
    from histofuse.cache import writer

    monkeypatch.setattr(writer, "CHUNK_BYTES", 5 * 8 * 2)  # 5 rows of 8 float16
    monkeypatch.setattr(writer, "SHARD_CHUNKS", 3)
    rng = np.random.default_rng(0)
    feats = {s: rng.normal(size=(n, 8)).astype(np.float16) for s, n in [("A", 37), ("B", 4)]}
    store = tmp_path / "s.zarr"
    with FeatureStoreWriter(store, {"cache_key": "k"}) as w:
        for s, f in feats.items():
            w.add(s, f, np.zeros((len(f), 2)))
    files = sorted(
        p.relative_to(store).as_posix() for p in (store / "A" / "features").rglob("c/*/*")
    )
    assert files == ["A/features/c/0/0", "A/features/c/1/0", "A/features/c/2/0"]  # 15 rows each
    expected = np.concatenate([feats["A"], feats["B"]])
    np.testing.assert_array_equal(open_features([store]).load(), expected)
    streamed = open_features([store], block_bytes=5 * 8 * 2)
    assert len(streamed.features.chunks[0]) == 9  # 8 chunks of A, 1 of B
    np.testing.assert_array_equal(streamed.features.compute(), expected)


@pytest.mark.parametrize("damage", ["truncate", "index", "coords"])
def test_damaged_chunk_files_give_a_clear_error(tmp_path, damage):
    store = tmp_path / "s.zarr"
    _write(store, samples=("A",))
    array = "coords" if damage == "coords" else "features"
    chunk = store / "A" / array / "c" / "0" / "0"
    raw = chunk.read_bytes()
    if damage == "truncate":  # the index survives, the rows do not
        chunk.write_bytes(raw[:10] + raw[-20:])
    elif damage == "index":
        chunk.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))
    else:  # an unsharded chunk cut short
        chunk.write_bytes(raw[:-8])
    with pytest.raises(HistofuseError, match=rf"A/{array}/c/0/0 .*re-run its embed job"):
        open_features([store]).load()
