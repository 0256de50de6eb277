import multiprocessing as mp
import time

import pytest

from histofuse.devices import gpu_slot
from histofuse.errors import HistofuseError


def _hold(n, queue, seconds):
    with gpu_slot(n) as index:
        queue.put(index)
        time.sleep(seconds)


def test_concurrent_jobs_get_distinct_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOFUSE_GPU_LOCKS", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(2, queue, 1.5)) for _ in range(2)]
    for p in procs:
        p.start()
    got = sorted(queue.get(timeout=20) for _ in procs)
    for p in procs:
        p.join()
    assert got == [0, 1]


def test_busy_devices_time_out_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOFUSE_GPU_LOCKS", str(tmp_path))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    holder = ctx.Process(target=_hold, args=(1, queue, 3.0))
    holder.start()
    queue.get(timeout=20)
    with (
        pytest.raises(HistofuseError, match="no free GPU among 1"),
        gpu_slot(1, timeout=0.3, poll=0.1),
    ):
        pass
    holder.join()
    with gpu_slot(1, timeout=1) as index:  # released when the holder exits
        assert index == 0


def test_a_killed_holder_releases_its_slot(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOFUSE_GPU_LOCKS", str(tmp_path))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    holder = ctx.Process(target=_hold, args=(1, queue, 60.0))
    holder.start()
    queue.get(timeout=20)
    holder.kill()
    holder.join()
    with gpu_slot(1, timeout=2) as index:
        assert index == 0


def test_claim_device_holds_distinct_gpu_slots_for_the_job(tmp_path, monkeypatch):
    """The embed stage's device claim: two jobs asking for ``cuda`` get different devices."""
    from histofuse.devices import claim_device

    monkeypatch.setenv("HISTOFUSE_GPU_LOCKS", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with claim_device("cuda", n_devices=2) as first, claim_device("cuda", n_devices=2) as second:
        assert {first, second} == {"cuda:0", "cuda:1"}
        with (
            pytest.raises(HistofuseError, match="no free GPU"),
            claim_device("cuda", n_devices=2, timeout=0.2),
        ):
            pass
    with claim_device("cuda", n_devices=2) as again:  # released when the job ends
        assert again == "cuda:0"
    # explicit devices and the CPU take no lock
    with claim_device("cuda", n_devices=1) as held, claim_device("cuda:0", n_devices=1) as given:
        assert held == given == "cuda:0"
    with claim_device("cpu") as cpu, claim_device("auto", n_devices=0) as auto:
        assert cpu == auto == "cpu"
    with (
        pytest.raises(HistofuseError, match="no GPU is visible"),
        claim_device("cuda", n_devices=0),
    ):
        pass
