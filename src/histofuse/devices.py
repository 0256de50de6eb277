"""GPU slots for local runs: two concurrent GPU jobs never share a device.

Snakemake counts ``resources: gpu`` locally but never says which device a job should use. On a
multi-GPU workstation each encoder job (``embed``, ``tokens``) therefore takes an exclusive lock
on one device slot (a ``flock`` on ``<lock dir>/gpu<N>.lock``) for its lifetime, and runs on that
device. On SLURM, cgroups already isolate devices, so only the device the job sees is used. Locks
are released by the kernel when the process exits, even on ``kill -9``.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from histofuse.errors import HistofuseError


def lock_dir() -> Path:
    """Returns the folder of the GPU slot locks (``$HISTOFUSE_GPU_LOCKS`` or a temp folder)."""
    path = Path(
        os.environ.get("HISTOFUSE_GPU_LOCKS", Path(tempfile.gettempdir()) / "histofuse-gpus")
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def gpu_slot(n_devices: int, timeout: float = 3600.0, poll: float = 0.5) -> Iterator[int]:
    """Holds an exclusive lock on one of ``n_devices`` GPU slots and yields its index.

    Args:
        n_devices: Devices visible to this process.
        timeout: Seconds to wait for a free slot.
        poll: Seconds between attempts.

    Raises:
        HistofuseError: If no slot frees up within ``timeout``.
    """
    if n_devices < 1:
        raise ValueError("n_devices must be at least 1")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    names = [v for v in visible.split(",") if v] or [str(i) for i in range(n_devices)]
    folder = lock_dir()
    deadline = time.monotonic() + timeout
    while True:
        for index in range(n_devices):
            handle = open(folder / f"gpu{names[index % len(names)]}.lock", "a")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if time.monotonic() > deadline:
            raise HistofuseError(
                f"no free GPU among {n_devices} after {timeout:.0f} s (locks in {folder}); "
                "run with `--resources gpu=N` so Snakemake starts at most N GPU jobs"
            )
        time.sleep(poll)


@contextmanager
def claim_device(
    device: str, n_devices: int | None = None, timeout: float = 3600.0
) -> Iterator[str]:
    """Resolves an encoder job's device, holding a GPU slot for the job's lifetime.

    ``auto`` means ``cuda`` when a GPU is visible, else ``cpu``. ``cuda`` (no index) takes the
    first free slot among the visible devices (:func:`gpu_slot`) and yields ``cuda:<slot>``;
    ``cpu`` and an explicit ``cuda:N`` are used as given, without a lock.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        n_devices: Visible devices; counted with ``torch.cuda.device_count()`` when omitted.
        timeout: Seconds to wait for a free slot.

    Raises:
        HistofuseError: If no slot frees up within ``timeout``.
    """
    if device == "auto" or (device == "cuda" and n_devices is None):
        import torch

        if n_devices is None:
            n_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device == "auto":
            device = "cuda" if n_devices > 0 else "cpu"
    if device != "cuda":
        yield device
        return
    if not n_devices:
        raise HistofuseError(
            "embed device 'cuda' was asked for but no GPU is visible; set embed.device to "
            "'auto' or 'cpu' in the config"
        )
    with gpu_slot(n_devices, timeout=timeout) as index:
        yield f"cuda:{index}"
