"""HEST-Bench tasks in the workflow: a task folder's samples, splits and genes.

A task with ``hest_bench: FOLDER`` in the config takes its samples from a HEST-Bench task folder
(``splits/``, ``patches/*.h5``, ``adata/*.h5ad``, ``var_50genes.json``; see
:func:`histofuse.slides.patches.read_hest_bench`). Its samples join the one sample table of the
run with the id ``{task}.{sample_id}``, so a HEST-Bench sample never collides with the same
sample's slide in a sample sheet; they have a ``patches`` file instead of a slide, and the tile
step turns that file into a tiles table that the embed stage reads instead of a slide. The fit
stage uses the folder's official splits (``split_id`` holds the folder's own sample id, which the
split files name) and its ``var_50genes.json`` as the gene list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from histofuse.errors import HistofuseError

#: The gene list of a task folder that the fit stage reads.
GENE_LIST = "var_50genes.json"
COLUMNS = ("sample_id", "patient_id", "slide", "expression", "mpp", "mpp_source", "patches")


def bench_sample_id(task: str, sample: str) -> str:
    """The id of a HEST-Bench sample in the run's sample table: ``{task}.{sample}``."""
    return f"{task}.{sample}"


def bench_samples(task: str, folder: str | Path) -> pd.DataFrame:
    """The sample table of a HEST-Bench task folder, ids prefixed with the task name.

    Args:
        task: The task name in the config.
        folder: The HEST-Bench task folder.

    Returns:
        Columns ``sample_id, patient_id, slide`` (empty), ``expression, mpp`` (NaN),
        ``mpp_source`` (empty), ``patches``, ``split_id`` (the folder's sample id) and ``task``,
        indexed by ``sample_id``.

    Raises:
        HistofuseError: If the folder is malformed (see ``read_hest_bench``) or a sample id
            cannot be used as a file name.
    """
    from histofuse.slides.patches import read_hest_bench

    table = read_hest_bench(folder)["samples"]
    return _namespaced(task, sorted(table["sample_id"]), table, Path(folder))


def _namespaced(task: str, ids: list[str], table: pd.DataFrame, folder: Path) -> pd.DataFrame:
    import re

    bad = [s for s in ids if not re.fullmatch(r"[A-Za-z0-9._-]+", s)]
    if bad:
        raise HistofuseError(
            f"HEST-Bench folder {folder}: sample_id {bad[0]!r} may only use letters, digits, '.', "
            "'_' and '-'"
        )
    rows = []
    for sid in ids:
        patient = table.at[sid, "patient_id"]
        rows.append(
            {
                "sample_id": bench_sample_id(task, sid),
                "patient_id": f"{task}.{patient or sid}",
                "slide": "",
                "expression": table.at[sid, "expression"],
                "mpp": float("nan"),
                "mpp_source": "",
                "patches": table.at[sid, "patches"],
                "split_id": sid,
                "task": task,
            }
        )
    return pd.DataFrame(rows).set_index("sample_id", drop=False)


def planned_bench_samples(task: str, folder: str | Path, files: list[Path]) -> pd.DataFrame:
    """The table :func:`bench_samples` will return once a generator writes ``files`` to ``folder``.

    Args:
        task: The task name in the config.
        folder: The HEST-Bench task folder.
        files: The files the generator will write there: a sample's patches are
            ``patches/{sample_id}.h5`` and its spots ``adata/{sample_id}.h5ad``.
    """
    patches = {f.stem: str(f) for f in files if f.parent.name == "patches"}
    expression = {f.stem: str(f) for f in files if f.parent.name == "adata"}
    ids = sorted(patches)
    table = pd.DataFrame(
        {"patches": patches, "expression": expression, "patient_id": dict.fromkeys(ids, "")}
    )
    return _namespaced(task, ids, table, Path(folder))


def bench_files(folder: str | Path) -> list[str]:
    """The files of a task folder that the fit stage reads (split files and the gene list)."""
    folder = Path(folder)
    splits = sorted(str(p) for p in (folder / "splits").glob("*.csv"))
    return [*splits, str(folder / GENE_LIST)]


def planned_bench_files(files: list[Path]) -> list[str]:
    """The files of :func:`bench_files` among those a generator will write, in their order."""
    return [str(f) for f in files if f.parent.name == "splits" or f.name == GENE_LIST]


def resolve_bench_task(task_name: str, task: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The sample table and the concrete settings of a ``hest_bench`` task.

    The folder's official splits replace ``split``; its ``var_50genes.json`` becomes
    ``genes.list`` unless the config sets a list.

    Args:
        task_name: The task's name.
        task: The task's config, with ``hest_bench`` set.

    Returns:
        The task's sample table (see :func:`bench_samples`) and the task with ``split`` and
        ``genes`` filled in.
    """
    from histofuse.slides.patches import read_hest_bench

    folder = Path(task["hest_bench"])
    bench = read_hest_bench(folder)
    sheet = bench_samples(task_name, folder)
    genes = dict(task.get("genes") or {})
    if not genes.get("list"):
        genes["list"] = bench["genes"]
    split = {"scheme": "official", "dir": str(folder / "splits")}
    return sheet, {**task, "genes": genes, "split": split}
