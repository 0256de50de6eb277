"""A feature store whose embed job is killed mid-write is never read as complete."""

import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import embed_cmd, one_thread_env

from histofuse.cache import manifest_path, open_features, read_manifest
from histofuse.errors import HistofuseError


@pytest.mark.slow
def test_killed_store_is_never_complete_and_rerun_matches_clean_run(small_tiles, tmp_path):
    tiles = list(small_tiles.values())
    store = tmp_path / "killed" / "tiny-vit" / "0000.zarr"
    proc = subprocess.Popen(
        embed_cmd(tiles, store, batch_size=1),
        env=one_thread_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    partial = []
    # wait until at least one sample's group is written into the temporary store
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [
            d for t in store.parent.glob(".0000.zarr.tmp-*") for d in t.iterdir() if d.is_dir()
        ]
        if partial:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "embed finished before it could be killed; make the cohort bigger"
    assert partial, "no sample was written within the time limit"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    leftovers = list(store.parent.glob(".0000.zarr.tmp-*"))
    assert leftovers, "the partial store should be left under its temporary name"
    assert not store.exists() and not manifest_path(store).exists()
    with pytest.raises(HistofuseError, match="unfinished"):
        open_features([store])
    with pytest.raises(HistofuseError, match="unfinished"):
        open_features([leftovers[0]])

    subprocess.run(
        embed_cmd(tiles, store, batch_size=1), env=one_thread_env(), check=True, capture_output=True
    )
    assert not list(store.parent.glob(".0000.zarr.tmp-*")), "stale temporary store not removed"
    clean = tmp_path / "clean" / "tiny-vit" / "0000.zarr"
    subprocess.run(
        embed_cmd(tiles, clean, batch_size=1), env=one_thread_env(), check=True, capture_output=True
    )

    assert read_manifest(store)["samples"] == read_manifest(clean)["samples"]
    a, b = open_features([store]), open_features([clean])
    assert a.provenance["cache_key"] == b.provenance["cache_key"]
    np.testing.assert_array_equal(a.features.compute(), b.features.compute())
    assert a.index.equals(b.index)
