"""Which failed jobs are worth a retry: a user error ends the job's log, anything else does not.

A ``histofuse`` verb ends a user error (a bad config value, an unreadable weights file) with one
line ``histofuse: error: …`` and exit status 2 (:mod:`histofuse.cli`). Such a failure is
deterministic: a retry fails the same way, and on SLURM it costs a second allocation (for embed, a
GPU job at twice the memory). Infrastructure failures (node failure, OOM kill, time limit) end the
log with anything else, or leave it unwritten, and are retried.

The workflow's rules ask :func:`refused_retry` for their ``slurm_extra`` resource: on a retry
after a user error it returns an option that ``sbatch`` refuses before anything is queued, so the
job fails at once, its log (still the first attempt's) is shown, and no second job runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

USER_ERROR = "histofuse: error:"
TAIL_BYTES = 65536
# What a verb writes after a user error's message would start with: a log record
# (`histofuse.cli`'s format starts with the time) or a traceback. Neither follows the error line
# of a verb that stopped on it; the message itself may run over several lines (a library's text).
LATER_OUTPUT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|Traceback )")
# sbatch rejects an option it does not know ("sbatch: unrecognized option '…'") before it contacts
# the controller; the option's name says why the retry was refused, its value where to look.
REFUSAL = "--histofuse-user-error-not-retried"


def user_error(log: str | Path, since: float) -> str | None:
    """Returns the ``histofuse: error:`` line that closes a job's log, or None.

    Args:
        log: The rule's log file (the verb's stdout and stderr).
        since: Epoch seconds (this Snakemake run's start): a log last written earlier is a
            previous run's, left behind by an attempt that failed before its command ran.

    Returns:
        The log's last line that starts with ``histofuse: error:`` when the log was written since
        ``since`` and nothing after that line is a log record or a traceback (the verb stopped
        there), else None: no log, an older log, or a log ending otherwise (a traceback, a kill
        or a time limit in the middle of the work).
    """
    path = Path(log)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    if stat.st_mtime < since:
        return None
    with path.open("rb") as fh:
        fh.seek(max(0, stat.st_size - TAIL_BYTES))
        tail = fh.read().decode(errors="replace")
    lines = tail.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(USER_ERROR)]
    if not starts or any(LATER_OUTPUT.match(line) for line in lines[starts[-1] + 1 :]):
        return None
    return lines[starts[-1]].strip()


def refused_retry(log: str | Path, attempt: int, since: float) -> str | None:
    """The ``slurm_extra`` of a job's attempt: None, or an option sbatch refuses after a user error.

    Args:
        log: The rule's log file for this job.
        attempt: Snakemake's attempt counter (1 for the first submission).
        since: Epoch seconds of this Snakemake run's start (see :func:`user_error`).

    Returns:
        None for a first attempt and for a retry after any other failure; for a retry after a
        user error, ``--histofuse-user-error-not-retried=<log>``.
    """
    if attempt <= 1 or user_error(log, since) is None:
        return None
    return shlex.quote(f"{REFUSAL}={log}")
