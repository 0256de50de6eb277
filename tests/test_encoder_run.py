"""Both encoder stages (``embed`` and ``tokens``) run through one loop: same device claim, same
failed-sample filter, same store and provenance; the verbs take the ``embed`` section as one
document."""

from contextlib import contextmanager

import numpy as np
import pytest

from histofuse import devices
from histofuse.cache import open_features, read_manifest, read_provenance
from histofuse.cli import main
from histofuse.embed import embed_shard
from histofuse.peka.tokens import embed_tokens
from histofuse.slides.failures import failure_meta
from histofuse.slides.spec import TilingSpec
from histofuse.slides.tiling import read_tiles, write_tiles

REASON = "slide BROKEN.svs cannot be read"


@pytest.fixture
def shard(small_tiles, tmp_path):
    """One tiled sample, one without tiles and one the tile step recorded as failed."""
    good = sorted(small_tiles)[0]
    table, meta = read_tiles(small_tiles[good])
    empty = tmp_path / "EMPTY.parquet"
    write_tiles(table.iloc[:0], {**meta, "sample": "EMPTY"}, empty)
    broken = tmp_path / "BROKEN.parquet"
    spec = TilingSpec.from_config({"patch_um": 56.0, "target_mpp": 1.0})
    write_tiles(table.iloc[:0], failure_meta("BROKEN", "BROKEN.svs", spec, REASON), broken)
    return [small_tiles[good], empty, broken], {good: len(table), "EMPTY": 0}


@pytest.fixture
def claims(monkeypatch):
    """Records the device each job claims and when it lets the claim go (runs on the CPU)."""
    real, seen = devices.claim_device, []

    @contextmanager
    def spy(device, *args, **kwargs):
        seen.append(device)
        with real("cpu") as got:
            yield got
        seen.append("released")

    monkeypatch.setattr(devices, "claim_device", spy)
    return seen


@pytest.mark.parametrize("stage", ["embed", "tokens"])
def test_failed_samples_are_left_out_and_the_device_is_claimed(stage, shard, claims, tmp_path):
    tiles, samples = shard
    store = tmp_path / stage / "0000.zarr"
    if stage == "embed":
        prov = embed_shard(tiles, "tiny-vit", store, batch_size=16, device="auto", num_workers=0)
    else:
        prov = embed_tokens(tiles, "tiny-vit", store, blocks=1, batch_size=16, device="auto")

    assert claims == ["auto", "released"] and prov["device"] == "cpu"
    assert read_manifest(store)["samples"] == samples
    stored = read_provenance(store)
    assert stored["failed_samples"] == {"BROKEN": REASON}
    assert stored["n_tiles"] == sum(samples.values())
    table = open_features([store])
    assert set(table.index["sample"]) == set(samples) - {"EMPTY"}
    width = 192 if stage == "embed" else 50 * 192
    assert table.features.shape == (sum(samples.values()), width)


def test_tokens_verb_reads_the_embed_section_as_one_document(small_tiles, tmp_path, capsys):
    tiles = [str(small_tiles[sorted(small_tiles)[0]])]
    store = tmp_path / "t.zarr"
    job = ["tokens", "--encoder", "tiny-vit", "--tiles", *tiles, "--out", str(store)]
    job += ["--blocks", "2", "--dtype", "float32"]
    assert main([*job, "--embed", '{"batch_size": 7, "device": "cpu", "num_workers": 0}']) == 0
    prov = read_provenance(store)
    assert prov["batch_size"] == {"requested": 7, "used": 7}
    assert prov["tokens"]["start_block"] == 2 and prov["dtype"] == "float32"
    assert prov["tokens"]["bytes_per_tile"] == 50 * 192 * 4
    tokens = open_features([store]).load()
    assert tokens.dtype == np.float32

    assert main([*job, "--embed", '{"batch_sise": 7}']) == 2
    assert "unknown config key(s) 'batch_sise'" in capsys.readouterr().err
