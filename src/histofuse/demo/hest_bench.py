"""Writes a demo cohort's samples as a HEST-Bench task folder.

Only the standard library is imported at module level (the package is imported by Snakefiles).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from histofuse.atomic import atomic_path, write_text
from histofuse.demo.layout import (
    HEST_BENCH_DIR,
    HEST_BENCH_GENE_LISTS,
    MARKER,
    SHEET,
    check_float,
    check_int,
    hest_bench_expression_path,
    hest_bench_ids,
    hest_bench_patches_path,
    hest_bench_split_path,
)

if TYPE_CHECKING:
    import pandas as pd

    from histofuse.slides.spec import TilingSpec


def write_demo_hest_bench(
    cohort: str | Path,
    out: str | Path | None = None,
    samples: list[str] | None = None,
    patch_px: int = 224,
    patch_mpp: float = 0.5,
    n_genes: int = 50,
) -> Path:
    """Writes a demo cohort's samples as a HEST-Bench task folder.

    The layout is HEST-Bench's (``hest_protocol.md`` §3.1): ``patches/{id}.h5`` with ``img``
    (N, ``patch_px``, ``patch_px``, 3) uint8 patches centred on the spots, cut at ``patch_mpp``
    µm/px by the tile reader, ``barcode`` (N×1 bytes) and ``coords`` (N×2 level-0 px);
    ``adata/{id}.h5ad`` (the spot counts); ``splits/train_{i}.csv`` / ``test_{i}.csv``
    (``sample_id, patches_path, expr_path``; one patient per test fold); ``var_50genes.json``
    and ``mean_50genes.json`` (``{"genes": [...]}``: the most variable and the most expressed
    genes of log1p counts over all spots of the task, as HEST chose them).

    Args:
        cohort: A folder written by :func:`histofuse.demo.write_demo_cohort`.
        out: The task folder (default ``cohort/hest-bench``).
        samples: Sample ids (default :func:`histofuse.demo.layout.hest_bench_ids`); they must
            cover two patients.
        patch_px: Side of the stored patches in pixels (HEST: 224).
        patch_mpp: Their µm/px (HEST: 0.5).
        n_genes: Length of the gene lists (HEST: 50).

    Returns:
        The task folder.

    Raises:
        ValueError: If the cohort is missing, a sample is unknown or there are fewer than two
            patients.
    """
    from histofuse.slides.spec import TilingSpec

    cohort = Path(cohort)
    if not (cohort / MARKER).is_file():
        raise ValueError(f"cohort {cohort} is not a finished demo cohort (no {MARKER})")
    patch_px = check_int("patch_px", patch_px, 8)
    patch_mpp = check_float("patch_mpp", patch_mpp, 0.0)
    n_genes = check_int("n_genes", n_genes, 1)
    sheet, patients = _task_samples(cohort, samples)
    out = Path(out) if out is not None else cohort / HEST_BENCH_DIR
    spec = TilingSpec.from_config({"patch_um": patch_px * patch_mpp, "target_mpp": patch_mpp})
    logs = [_write_sample(out, sid, sheet.loc[sid], spec) for sid in patients.index]
    _write_gene_lists(out, logs, n_genes)
    _write_splits(out, patients)
    return out


def _task_samples(cohort: Path, samples: list[str] | None) -> tuple[pd.DataFrame, pd.Series]:
    """The cohort's sample sheet and the task's samples' patients (indexed by sample id).

    Raises:
        ValueError: If a sample is unknown or there are fewer than two patients.
    """
    from histofuse.samples import load_samples

    meta = json.loads((cohort / MARKER).read_text())
    sheet = load_samples(cohort / SHEET)
    ids = samples or hest_bench_ids(meta["n_patients"], meta["slides_per_patient"])
    unknown = sorted(set(ids) - set(sheet.index))
    if unknown:
        raise ValueError(f"samples {unknown} are not in the cohort {cohort}")
    patients = sheet.loc[ids, "patient_id"]
    if patients.nunique() < 2:
        raise ValueError("a HEST-Bench task needs samples of at least two patients")
    return sheet, patients


def _write_sample(out: Path, sample_id: str, row: pd.Series, spec: TilingSpec) -> pd.DataFrame:
    """Writes a sample's patches and a copy of its counts; returns its log1p counts."""
    import h5py
    import numpy as np

    from histofuse.data.expression import read_counts
    from histofuse.slides.reader import TileDataset
    from histofuse.slides.tiling import tile_spots

    table, tmeta = tile_spots(row["slide"], row["expression"], spec)
    ds = TileDataset(table, tmeta)
    with atomic_path(out / hest_bench_patches_path(sample_id)) as tmp, h5py.File(tmp, "w") as f:
        f["img"] = np.stack([ds[i] for i in range(len(ds))]).astype(np.uint8)
        f["barcode"] = np.array([b.encode() for b in table["barcode"]])[:, None]
        f["coords"] = table[["x", "y"]].to_numpy(dtype=np.float64)
    with atomic_path(out / hest_bench_expression_path(sample_id)) as tmp:
        shutil.copyfile(row["expression"], tmp)
    return np.log1p(read_counts(row["expression"]))


def _write_gene_lists(out: Path, logs: list[pd.DataFrame], n_genes: int) -> None:
    """The ``n_genes`` most variable and most expressed genes of the task's log1p counts."""
    import pandas as pd

    from histofuse.data.expression import top_variable_genes

    log_counts = pd.concat(logs, ignore_index=True)
    var_genes = top_variable_genes(log_counts, n_genes)
    mean = log_counts.mean(axis=0)
    mean_genes = sorted(mean.index, key=lambda g: (-mean[g], g))[:n_genes]
    for name, genes in zip(HEST_BENCH_GENE_LISTS, (var_genes, mean_genes), strict=True):
        write_text(json.dumps({"genes": genes}, indent=1) + "\n", out / name)


def _write_splits(out: Path, patients: pd.Series) -> None:
    """One fold per patient: that patient's samples to test, the others' to train."""
    for i, patient in enumerate(sorted(set(patients))):
        for side, chosen in (("train", patients != patient), ("test", patients == patient)):
            lines = ["sample_id,patches_path,expr_path"]
            lines += [
                f"{s},{hest_bench_patches_path(s)},{hest_bench_expression_path(s)}"
                for s in patients.index[chosen]
            ]
            write_text("\n".join(lines) + "\n", out / hest_bench_split_path(side, i))
