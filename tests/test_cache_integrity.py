"""A feature store proves what it holds: damage to a store written by the real writer (a chunk
file deleted, rows permuted, a byte flipped, a sample group or array removed) is an error naming
the store, the sample, the array and the command that rebuilds it, never fill values or rows
in the wrong place."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from histofuse.cache import FeatureStoreWriter, open_features
from histofuse.errors import HistofuseError

DIM = 8


def _write(store, samples=("A", "B"), n=6):
    """A store of spot samples with distinct rows; returns the features written (float16)."""
    rng = np.random.default_rng(0)
    written = {}
    with FeatureStoreWriter(store, {"cache_key": "k", "encoder": {"name": "e"}}) as w:
        for s in samples:
            f = rng.normal(size=(n, DIM)).astype(np.float16)
            w.add(s, f, rng.integers(0, 1000, (n, 2)), np.array([f"{s}-{j}" for j in range(n)]))
            written[s] = f
    return written


def _rebuild(store) -> str:
    return rf"snakemake --forcerun \S*{store.parent.name}/0000\.manifest\.json"


def _load_all(store):
    """Opens the store and reads every feature, both ways a reader does."""
    table = open_features([store])
    table.load()
    table.features.compute()


@pytest.mark.parametrize(
    ("remove", "array"),
    [
        ("B/features/c/0/0", "features"),
        ("B/coords/c/0/0", "coords"),
        ("B/barcodes/c/0", "barcodes"),
        ("B/barcodes", "barcodes"),
        ("B", None),  # the whole sample group
    ],
)
def test_a_missing_chunk_file_is_an_error_naming_store_sample_and_array(tmp_path, remove, array):
    store = tmp_path / "enc" / "0000.zarr"
    _write(store)
    path = store / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(HistofuseError) as err:
        _load_all(store)
    message = str(err.value)
    if array is None:
        assert f"feature store {store}: sample B: its group {store / 'B'} is missing" in message
    else:
        assert f"feature store {store}: sample B, array {array}: chunk file" in message
        assert "is missing" in message
    assert len(message.splitlines()) == 1
    assert re.search(_rebuild(store), message), message


def test_all_zero_samples_are_written_and_read_back(tmp_path):
    """Chunks of fill values are written too, so that only damage leaves a chunk file out."""
    store = tmp_path / "enc" / "0000.zarr"
    with FeatureStoreWriter(store, {"cache_key": "k"}) as w:
        w.add("A", np.zeros((4, DIM)), np.zeros((4, 2)), np.array(list("abcd")))
    assert (store / "A" / "features" / "c" / "0" / "0").is_file()
    assert (store / "A" / "coords" / "c" / "0" / "0").is_file()
    table = open_features([store])
    np.testing.assert_array_equal(table.load(), np.zeros((4, DIM)))
    assert table.index["x"].tolist() == [0] * 4


def _swap_rows(path, row_bytes):
    """Swaps the first two rows of the first chunk of a chunk file."""
    raw = bytearray(path.read_bytes())
    first, second = raw[:row_bytes], raw[row_bytes : 2 * row_bytes]
    raw[:row_bytes], raw[row_bytes : 2 * row_bytes] = second, first
    path.write_bytes(bytes(raw))


def _flip(path, at):
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "array"),
    [
        ("permute", "features"),
        ("flip", "features"),
        ("permute", "coords"),
        ("flip", "barcodes"),
    ],
)
def test_altered_chunks_fail_their_checksum(tmp_path, damage, array):
    store = tmp_path / "enc" / "0000.zarr"
    _write(store)
    folder = store / "A" / array / "c"
    path = next(p for p in folder.rglob("*") if p.is_file())
    row_bytes = {"features": DIM * 2, "coords": 16}.get(array, 0)
    if damage == "permute":
        _swap_rows(path, row_bytes)
    else:
        _flip(path, 3)
    with pytest.raises(HistofuseError, match=rf"sample A, array {array}: .*checksum") as err:
        _load_all(store)
    assert f"feature store {store}:" in str(err.value)


def test_a_partial_read_verifies_the_whole_chunk(tmp_path):
    """Reading some rows of a chunk still checks all of it: a flipped byte in rows that were
    not asked for is found, and rows of an intact chunk come back unchanged."""
    from histofuse.cache import chunks

    store = tmp_path / "enc" / "0000.zarr"
    written = _write(store, samples=("A",), n=10)
    table = open_features([store])
    array = table._pieces[0][0]
    np.testing.assert_array_equal(
        chunks.read_block([(array, 3, 7)], DIM, "float16"), written["A"][3:7]
    )
    _flip(store / "A" / "features" / "c" / "0" / "0", 9 * DIM * 2)  # in row 9
    with pytest.raises(HistofuseError, match="sample A, array features: .*checksum"):
        chunks.read_block([(array, 3, 7)], DIM, "float16")


@pytest.mark.parametrize(
    ("array", "cut"),
    [
        ("features", lambda raw: raw[:10] + raw[-20:]),  # the shard index survives, the rows not
        ("coords", lambda raw: raw[:-8]),  # an unsharded chunk cut short
    ],
)
def test_a_truncated_chunk_is_an_error_naming_store_sample_and_array(tmp_path, array, cut):
    store = tmp_path / "enc" / "0000.zarr"
    _write(store)
    path = store / "B" / array / "c" / "0" / "0"
    path.write_bytes(cut(path.read_bytes()))
    with pytest.raises(HistofuseError) as err:
        _load_all(store)
    message = str(err.value)
    assert f"feature store {store}: sample B, array {array}: chunk file {path}" in message
    assert "is truncated" in message
    assert re.search(_rebuild(store), message), message


def test_chunks_read_in_many_pieces_are_verified_in_full(tmp_path, monkeypatch):
    """A chunk is read and checked in pieces of CRC_PIECE bytes; with pieces smaller than a row
    (and not dividing it), and chunks of 4 rows in one shard file, every row range reads the
    written rows, and a flipped byte before, inside or after the rows read in a chunk they
    touch is found."""
    from histofuse.cache import chunks, writer

    monkeypatch.setattr(writer, "CHUNK_BYTES", 4 * DIM * 2)  # chunks of 4 rows: 0-3, 4-7, 8-9
    monkeypatch.setattr(chunks, "CRC_PIECE", 6)  # a row is 16 bytes
    store = tmp_path / "enc" / "0000.zarr"
    written = _write(store, samples=("A",), n=10)["A"]
    array = open_features([store])._pieces[0][0]
    for start, stop in [(0, 10), (3, 7), (5, 6), (4, 8), (9, 10), (0, 1)]:
        got = chunks.read_block([(array, start, stop)], DIM, "float16")
        np.testing.assert_array_equal(got, written[start:stop], err_msg=f"rows {start}-{stop}")
    path = store / "A" / "features" / "c" / "0" / "0"
    for row in (4, 5, 7):  # before, inside and after rows 5-6 of the second chunk
        _flip(path, row * DIM * 2 + 7)
        with pytest.raises(HistofuseError, match="sample A, array features: .*checksum"):
            chunks.read_block([(array, 5, 7)], DIM, "float16")
        _flip(path, row * DIM * 2 + 7)  # repaired
        chunks.read_block([(array, 5, 7)], DIM, "float16")


@pytest.mark.parametrize(
    ("version", "says"),
    [
        (0, r"format version 0, older than this histofuse reads \(2"),
        (1, r"format version 1, older than this histofuse reads \(2"),
        (None, r"format version None, older"),
        (99, r"format version 99, newer than this histofuse reads \(2\); upgrade histofuse"),
    ],
)
def test_a_store_of_another_format_version_is_refused_with_the_fix(tmp_path, version, says):
    import json

    from histofuse.cache import manifest_path, read_provenance

    store = tmp_path / "enc" / "0000.zarr"
    _write(store)
    man = manifest_path(store)
    doc = json.loads(man.read_text())
    assert doc["format_version"] == 2
    doc["format_version"] = version
    man.write_text(json.dumps(doc))
    for read in (lambda: open_features([store]), lambda: read_provenance(store)):
        with pytest.raises(HistofuseError, match=says) as err:
            read()
        assert re.search(_rebuild(store), str(err.value))
