"""The SLURM executor plugin's start-up probe, timed and kept out of workflow timings.

Snakemake imports every installed executor plugin at start-up, and the SLURM plugin runs
``scontrol show config`` then, whichever executor the run uses. Where SLURM's client is installed
but no controller answers (a test machine with the daemons stopped) that call waits ~9 s before
failing. :func:`slurm_probe` times it once and, when it takes over a second, returns a folder
holding a ``scontrol`` that fails at once, to put first on the benchmarked runs' PATH. On a
cluster the controller answers in milliseconds; without SLURM there is no call.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path


def slurm_probe(tmp: Path) -> tuple[float | None, Path | None]:
    """Times ``scontrol show config``; returns (seconds or None without SLURM, shim or None)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return None, None
    t = time.perf_counter()
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run([scontrol, "show", "config"], capture_output=True, timeout=10)
    seconds = time.perf_counter() - t
    if seconds <= 1.0:
        return seconds, None
    shim = tmp / "slurm-shim"
    shim.mkdir()
    (shim / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (shim / "scontrol").chmod(0o755)
    return seconds, shim
