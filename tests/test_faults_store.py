"""Feature stores under concurrent writers, a full disk and a read-only results folder.

Embed jobs run as real ``histofuse embed`` processes; faults come from the kernel (a file size
limit, a folder the process may not write to), not from patched functions.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import embed_cmd, one_thread_env

from histofuse.cache import FeatureStoreWriter, manifest_path, open_features, read_manifest
from histofuse.errors import HistofuseError


def _leftovers(store: Path) -> list[Path]:
    return list(store.parent.glob(f".{store.name}.tmp-*"))


def _assert_same_store(store: Path, reference: Path) -> None:
    a, b = open_features([store]), open_features([reference])
    assert read_manifest(store)["samples"] == read_manifest(reference)["samples"]
    assert a.provenance["cache_key"] == b.provenance["cache_key"]
    np.testing.assert_array_equal(a.features.compute(), b.features.compute())
    assert a.index.equals(b.index)


@pytest.fixture(scope="module")
def shards(small_tiles) -> list[list[Path]]:
    """The small cohort's tiles split into two shards of two samples."""
    paths = [small_tiles[s] for s in sorted(small_tiles)]
    return [paths[:2], paths[2:]]


@pytest.fixture(scope="module")
def references(shards, tmp_path_factory) -> list[Path]:
    """Each shard embedded alone, one after the other."""
    from histofuse.embed import embed_shard

    out = tmp_path_factory.mktemp("reference")
    stores = []
    for i, tiles in enumerate(shards):
        stores.append(out / f"{i:04d}.zarr")
        embed_shard(tiles, "tiny-vit", stores[-1], device="cpu")
    return stores


# --- concurrency -------------------------------------------------------------------------------


def test_a_second_writer_of_the_same_store_is_refused(tmp_path):
    store = tmp_path / "enc" / "0000.zarr"
    with FeatureStoreWriter(store, {"cache_key": "k"}) as first:
        first.add("A", np.ones((3, 4)), np.zeros((3, 2)))
        with (
            pytest.raises(HistofuseError, match="being written by another job"),
            FeatureStoreWriter(store, {"cache_key": "k"}) as second,
        ):
            second.add("A", np.zeros((3, 4)), np.zeros((3, 2)))
        assert len(_leftovers(store)) == 1, "the refused writer removed the first one's work"
    np.testing.assert_array_equal(open_features([store]).features.compute(), np.ones((3, 4)))
    # the lock is released: a later writer replaces the store
    with FeatureStoreWriter(store, {"cache_key": "k"}) as third:
        third.add("A", np.full((3, 4), 2.0), np.zeros((3, 2)))
    np.testing.assert_array_equal(open_features([store]).features.compute(), np.full((3, 4), 2))
    assert not _leftovers(store)
    assert sorted(p.name for p in store.parent.iterdir()) == ["0000.manifest.json", "0000.zarr"]


@pytest.mark.slow
def test_two_shards_of_one_encoder_embedded_at_once(shards, references, tmp_path):
    stores = [tmp_path / "tiny-vit" / f"{i:04d}.zarr" for i in range(2)]
    procs = [
        subprocess.Popen(embed_cmd(t, s), env=one_thread_env(), stderr=subprocess.PIPE, text=True)
        for t, s in zip(shards, stores, strict=True)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    for store, reference in zip(stores, references, strict=True):
        _assert_same_store(store, reference)
        assert not _leftovers(store)


@pytest.mark.slow
def test_same_shard_launched_twice_one_wins_cleanly(shards, references, tmp_path):
    store = tmp_path / "tiny-vit" / "0000.zarr"
    first = subprocess.Popen(
        embed_cmd(shards[0], store, batch_size=1),
        env=one_thread_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None and not _leftovers(store):
        time.sleep(0.01)
    # Held mid-write (as a slow or swapped-out job would be) while the second job runs.
    first.send_signal(signal.SIGSTOP)
    try:
        assert first.poll() is None and _leftovers(store), "the first job never started writing"
        second = subprocess.run(
            embed_cmd(shards[0], store), env=one_thread_env(), capture_output=True, text=True
        )
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    message = second.stderr.strip().splitlines()[-1]
    assert message.startswith("histofuse: error: feature store ") and str(store) in message
    assert "being written by another job" in message and "Traceback" not in second.stderr
    _assert_same_store(store, references[0])
    assert not _leftovers(store)


# --- disk full and read-only output ------------------------------------------------------------


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_disk_full_leaves_no_half_store_and_a_clear_error(shards, references, tmp_path):
    store = tmp_path / "tiny-vit" / "0000.zarr"
    # A file size limit below one sample's features: the kernel refuses the write (EFBIG), as a
    # full disk refuses it (ENOSPC), part-way through the store.
    proc = subprocess.run(
        embed_cmd(shards[0], store),
        env=one_thread_env(),
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(2048),
    )
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"histofuse: error: could not write feature store {store}")
    assert "nothing was kept" in message and "Traceback" not in proc.stderr
    assert not store.exists() and not manifest_path(store).exists() and not _leftovers(store)
    with pytest.raises(HistofuseError, match="unfinished"):
        open_features([store])
    # with room again, the same command writes the full store
    subprocess.run(
        embed_cmd(shards[0], store), env=one_thread_env(), check=True, capture_output=True
    )
    _assert_same_store(store, references[0])


def _without_root_override() -> list[str]:
    """A command prefix under which file permissions hold even for root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be simulated")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.mark.slow
def test_read_only_results_folder_gives_a_clear_error(shards, references, tmp_path):
    out = tmp_path / "tiny-vit"
    store = out / "0000.zarr"
    # an old finished store in a folder that then becomes read-only
    shutil.copytree(references[0], store)
    shutil.copy(manifest_path(references[0]), manifest_path(store))
    out.chmod(0o555)
    try:
        proc = subprocess.run(
            [*_without_root_override(), *embed_cmd(shards[0], store)],
            env=one_thread_env(),
            capture_output=True,
            text=True,
        )
    finally:
        out.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"histofuse: error: could not write feature store {store}")
    assert "Permission denied" in message and "make the results folder writable" in message
    assert "Traceback" not in proc.stderr and not _leftovers(store)
    _assert_same_store(store, references[0])  # the old store is untouched
