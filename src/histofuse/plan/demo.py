"""The demo cohort in the plan: its samples, files and job, known before its generator runs.

Every path comes from :mod:`histofuse.demo.layout`, the one description of the demo's folder,
imported only when the config generates the demo.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

if TYPE_CHECKING:
    from histofuse.demo.layout import DemoLayout


def layout(config: dict[str, Any]) -> DemoLayout | None:
    """The demo's layout when the config generates it (``demo.enabled``), else None."""
    if not config["demo"]["enabled"]:
        return None
    from histofuse.demo.layout import DemoLayout

    return DemoLayout.from_config(config)


def samples(demo: DemoLayout) -> pd.DataFrame:
    """The sample table the demo generator will write, indexed by ``sample_id``."""
    ids = demo.sample_ids
    return pd.DataFrame(
        {
            "sample_id": ids,
            "patient_id": [i.split("-")[0] for i in ids],
            "slide": [str(demo.slide(i)) for i in ids],
            "expression": [str(demo.expression(i)) for i in ids],
            "mpp": [float("nan")] * len(ids),
        }
    ).set_index("sample_id", drop=False)


def writes_bench(demo: DemoLayout | None, folder: str) -> bool:
    """Whether ``folder`` is the HEST-Bench task folder the demo generator writes."""
    return (
        demo is not None
        and demo.hest_bench
        and os.path.normpath(folder) == os.path.normpath(demo.hest_bench_dir)
    )


def bench_samples(demo: DemoLayout, task: str) -> pd.DataFrame:
    """The samples of a task on the demo's HEST-Bench folder (see ``bench_samples``)."""
    from histofuse.hest_bench import planned_bench_samples

    return planned_bench_samples(task, demo.hest_bench_dir, demo.hest_bench_files())


def bench_fit_files(demo: DemoLayout) -> list[str]:
    """The files of the demo's HEST-Bench folder that a fit reads (splits, gene list)."""
    from histofuse.hest_bench import planned_bench_files

    return planned_bench_files(demo.hest_bench_files())


class DemoFiles(NamedTuple):
    """The demo generator's files besides the sheet, by kind (the demo_cohort rule's outputs)."""

    slides: list[str]
    expression: list[str]
    bulk: str
    hest_bench: list[str]


def outputs(demo: DemoLayout) -> DemoFiles:
    """The files the demo generator writes besides the sheet."""
    ids = demo.sample_ids
    return DemoFiles(
        slides=[str(demo.slide(i)) for i in ids],
        expression=[str(demo.expression(i)) for i in ids],
        bulk=str(demo.bulk_table),
        hest_bench=[str(f) for f in demo.hest_bench_files()],
    )


def hest_bench_flags(config: dict[str, Any]) -> str:
    """The generator's HEST-Bench flags: patches cut at the tiling's size and µm/px."""
    if not config["demo"]["hest_bench"]:
        return ""
    t = config["tiling"]
    return (
        f"--hest-bench --hest-bench-px {round(t['patch_um'] / t['target_mpp'])}"
        f" --hest-bench-mpp {t['target_mpp']}"
    )
