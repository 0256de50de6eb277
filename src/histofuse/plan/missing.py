"""Results deleted by hand while what reads them was kept: listed at parse time, with the fix.

Snakemake rebuilds a missing file only when a job that reads it has to run: a metrics file
deleted after the report was written, or a feature store folder deleted with its manifest kept,
looks "up to date" from the report's side, and the report keeps showing the deleted row. The
workflow therefore lists such files on every run and dry run, with the command that rebuilds
them (``snakemake --forcerun report`` rebuilds every missing input of the report first).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from histofuse.plan import paths

if TYPE_CHECKING:
    from histofuse.plan.core import Plan


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _listed(files: list[str], more: int = 3) -> str:
    shown = ", ".join(files[:more])
    return shown + (f" and {len(files) - more} more" if len(files) > more else "")


def missing_results(plan: Plan) -> list[str]:
    """Warnings naming the plan's deleted results, each with the command that rebuilds them.

    Returns:
        One line for metrics or predictions files missing beside an existing report, one for
        feature stores missing beside their manifest; none when nothing is missing.
    """
    out = []
    if not plan.slide_only and os.path.exists(paths.report("summary.csv")):
        gone = [f for f in plan.metrics_files() + plan.prediction_files() if not os.path.exists(f)]
        if gone:
            out.append(
                f"{_count(len(gone), 'result file')} of this plan deleted after the report was "
                f"written ({_listed(gone)}); Snakemake does not rebuild them while the report "
                "looks up to date, so the report still shows them: run "
                "`snakemake --forcerun report`"
            )
    stores = [paths.features(e, s) for e in plan.config["encoders"] for s in plan.shards]
    gone = [s for s in stores if os.path.exists(paths.manifest_of(s)) and not os.path.isdir(s)]
    if gone:
        out.append(
            f"{_count(len(gone), 'feature store')} deleted, manifests kept ({_listed(gone)}); "
            "a job that reads one rebuilds it first; to rebuild them now: `snakemake --forcerun "
            + " ".join(paths.manifest_of(s) for s in gone[:3])
            + "`"
        )
    return out
