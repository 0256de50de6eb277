"""Spot rows: a spot-level task's samples, their spots' counts and the folds over spots.

Shared by the ``fit`` and ``peka`` stages. :func:`task_samples` chooses the task's samples (from
the sheet, or a HEST-Bench folder); :func:`spot_rows` then takes the features a stage loaded
for them and leaves out the samples recorded as failed at tiling, joins the counts of every
spot by (sample, barcode) and drops the spots whose features or counts are not finite. The
result, :class:`SpotRows`, is the ``rows`` strategy of :func:`histofuse.evaluation.runner.run_task`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from histofuse import settings
from histofuse.errors import HistofuseError
from histofuse.evaluation.runner import Fold
from histofuse.settings import Genes, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSamples:
    """A spot task's sheet, settings (HEST-Bench folders resolved) and chosen samples."""

    name: str
    task: Task
    sheet: pd.DataFrame
    names: list[str]


@dataclass
class SpotFeatures:
    """Per-spot features a stage loaded, row-aligned with ``index`` (``sample, barcode, …``).

    Attributes:
        index: One row per spot.
        arrays: Named arrays (spots, …) in memory or left in the cache (``LazyFeatures``).
        batch_rows: Rows read at once from arrays left in the cache.
    """

    index: pd.DataFrame
    arrays: dict[str, Any]
    batch_rows: int | None = None

    def take(self, rows: np.ndarray) -> SpotFeatures:
        """The given rows (positions or a boolean mask) of the index and of every array."""
        index = self.index.iloc[rows] if rows.dtype != bool else self.index[rows]
        arrays = {k: a[rows] for k, a in self.arrays.items()}
        return SpotFeatures(index.reset_index(drop=True), arrays, self.batch_rows)


@dataclass
class SpotRows:
    """The spots of a task with their raw counts (see :class:`~histofuse.evaluation.runner.Rows`).

    Attributes:
        task: The task's settings.
        sheet: The sample sheet.
        index: ``sample, barcode, x, y`` of every spot, samples in task order.
        counts: Raw counts, spots × all genes.
        total: Per-spot total counts over all genes.
        dropped: One ``{sample, barcode, reason}`` record per spot left out as not finite.
        failed: Samples left out as failed at tiling, with the reason.
    """

    task: Task
    sheet: pd.DataFrame
    index: pd.DataFrame
    counts: pd.DataFrame
    total: np.ndarray
    dropped: list[dict[str, str]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    sample_mpp: dict[str, list[float]] = field(default_factory=dict)
    genes_source: ClassVar[str] = "expression files"

    @property
    def genes(self) -> Genes:
        """The task's gene settings."""
        return self.task.genes

    @functools.cached_property
    def gene_basis(self) -> pd.DataFrame:
        """``log1p`` raw counts, spots × all genes."""
        return np.log1p(self.counts)

    def folds(self) -> list[Fold]:
        """The task's splits for every seed (patients and, for official splits, split ids)."""
        from histofuse.evaluation.splits import spots_um, task_splits

        sample_ids = self.index["sample"].to_numpy()
        patients = self.sheet.loc[sample_ids, "patient_id"].to_numpy()
        groups = (
            self.sheet.loc[sample_ids, "split_id"].to_numpy()
            if "split_id" in self.sheet
            else sample_ids
        )
        split = settings.to_dict(self.task.split)
        xy_um = None
        if split["scheme"] == "spatial-block":
            xy = self.index[["x", "y"]].to_numpy()
            xy_um = spots_um(self.sheet, sample_ids, xy, self.sample_mpp)
        return [
            Fold(seed, k, train, test)
            for seed in self.task.seed_list
            for k, (train, test) in enumerate(task_splits(split, patients, groups, seed, xy_um))
        ]

    def targets(self, genes: list[str]) -> np.ndarray:
        """Transformed counts of the genes (``task.transform``; totals over all genes)."""
        from histofuse.data.expression import transform_counts

        return transform_counts(self.counts[genes].to_numpy(), self.task.transform, self.total)

    def score(
        self, fold: Fold, genes: list[str], y: np.ndarray, pred: np.ndarray
    ) -> tuple[list[pd.DataFrame], pd.DataFrame]:
        """Per-gene metrics of the fold's test spots, pooled and per sample."""
        from histofuse.evaluation.scoring import score_spots

        test_index = self.index.iloc[fold.test]
        metrics, predictions = score_spots(
            y[fold.test], pred, genes, test_index, fold.seed, fold.fold
        )
        return [metrics], predictions

    def finish(self) -> list[pd.DataFrame]:
        """Nothing is scored across folds."""
        return []

    def meta(self) -> dict[str, Any]:
        """The task's settings, the split's warnings and what was left out."""
        from histofuse.evaluation.splits import split_warnings

        return {
            "task": settings.to_dict(self.task),
            "warnings": split_warnings(
                settings.to_dict(self.task.split),
                self.sheet.loc[self.index["sample"].unique(), "patient_id"].nunique(),
            ),
            "dropped_spots": self.dropped,
            "missing_samples": self.failed,
        }


def task_samples(
    task_name: str, task: Task, samples_sheet: str | Path, check_files: bool = True
) -> TaskSamples:
    """Reads the sheet and chooses the task's samples.

    A task with ``hest_bench`` takes its folder's samples, official splits and gene list. Else
    the samples are ``task.samples``, or every sample of the sheet that joins the task.

    Args:
        task_name: The task's name.
        task: Its settings.
        samples_sheet: The sample sheet.
        check_files: Whether every file the sheet names must exist.

    Raises:
        HistofuseError: If the task names samples the sheet lacks, or samples without an
            expression file.
    """
    from histofuse.samples import joins_task, load_samples

    if task.hest_bench:  # the folder's samples, official splits and gene list
        from histofuse.hest_bench import resolve_bench_task

        sheet, doc = resolve_bench_task(task_name, settings.to_dict(task))
        task = settings.load(Task, "tasks", doc, label=f"tasks.{task_name}")
    else:
        sheet = load_samples(samples_sheet, check_files=check_files)
    names = list(task.samples or [s for s in sheet.index if joins_task(sheet, s, task_name)])
    unknown = sorted(set(names) - set(sheet.index))
    if unknown:
        raise HistofuseError(f"task {task_name!r} names samples not in the sheet: {unknown}")
    no_expr = [s for s in names if not sheet.at[s, "expression"]]
    if no_expr:
        raise HistofuseError(f"task {task_name!r}: samples without an expression file: {no_expr}")
    return TaskSamples(task_name, task, sheet, names)


def spot_rows(
    samples: TaskSamples, stores: Sequence[str | Path], features: SpotFeatures
) -> tuple[SpotRows, SpotFeatures]:
    """Aligns a task's spots with their counts, leaving out failed samples and non-finite spots.

    Args:
        samples: The task's samples.
        stores: The stores the features came from (their provenance names failed samples).
        features: The features loaded for ``samples.names``.

    Returns:
        The spot rows and the features of the same spots, in the same order.

    Raises:
        HistofuseError: If a sample has no cached features, the samples disagree on their gene
            lists, or a sample has no finite spot left.
    """
    from histofuse.evaluation.features import leave_out_failed, recorded_mpp

    name, sheet = samples.name, samples.sheet
    names, failed = leave_out_failed(name, stores, samples.names)
    if failed:
        features = features.take(features.index["sample"].isin(names).to_numpy())
    missing = sorted(set(names) - set(features.index["sample"]))
    if missing:
        raise HistofuseError(
            f"task {name!r}: no cached features for samples {missing[:5]} ({len(missing)}): their "
            "tiles were deleted after the stores were made, or the stores predate them; rebuild "
            "their tiles and stores (`snakemake --forcerun results/tiles/<sample>.parquet`, or "
            "the shard's `results/tiles/shards/<shard>` folder with `tiling.jobs: shard`)"
        )
    counts, total = _read_counts(samples.task, name, sheet, names, features.index)
    order = np.concatenate([np.flatnonzero(features.index["sample"] == s) for s in names])
    features = features.take(order)
    keep, dropped = finite_spots(features, counts, sheet)
    if not keep.all():
        features = features.take(keep)
        counts, total = counts[keep].reset_index(drop=True), total[keep]
    rows = SpotRows(
        samples.task, sheet, features.index, counts, total, dropped, failed, recorded_mpp(stores)
    )
    return rows, features


def _read_counts(
    task: Task, task_name: str, sheet: pd.DataFrame, names: list[str], index: pd.DataFrame
) -> tuple[pd.DataFrame, np.ndarray]:
    """Raw counts of every spot of ``index``, samples in ``names`` order, and their totals.

    Counts are checked for what the task's transform assumes (see
    :func:`histofuse.data.expression.read_counts`).
    """
    from histofuse.data.expression import read_counts

    counts, totals = [], []
    for sample in names:
        rows = index["sample"] == sample
        c = read_counts(
            sheet.at[sample, "expression"],
            index.loc[rows, "barcode"].to_numpy(),
            transform=task.transform,
            integer_counts=task.integer_counts,
        )
        totals.append(c.sum(axis=1).to_numpy())
        counts.append(c)
    # Compared as sets: a NaN count is a bad spot (handled later), not a gene-list mismatch.
    genes_of = {s: set(c.columns) for s, c in zip(names, counts, strict=True)}
    odd = [s for s in names if genes_of[s] != genes_of[names[0]]]
    if odd:
        raise HistofuseError(
            f"task {task_name!r}: samples disagree on their gene lists ({odd[0]} vs {names[0]})"
        )
    return pd.concat(counts, ignore_index=True), np.concatenate(totals)


def finite_rows(x: Any, batch_rows: int | None = None) -> np.ndarray:
    """Whether each row of ``x`` (in memory, or left in the cache) holds only finite values."""
    if isinstance(x, np.ndarray):
        return np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
    # features left in the cache are checked batch by batch, within the memory budget
    batches = x.batches(batch_rows or len(x))
    return np.concatenate([np.isfinite(b).all(axis=1) for b in batches])


def finite_spots(
    features: SpotFeatures, counts: pd.DataFrame, sheet: pd.DataFrame
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Finds the spots whose features and counts are all finite; logs and records the others.

    A spot with NaN or inf in its cached features or its expression counts cannot be fitted or
    scored, so it is left out of the task; each such spot is named in the returned records (saved
    in the metrics file's metadata) and every affected sample gets one warning.

    Args:
        features: The spots' features, rows aligned with ``counts``.
        counts: Raw counts (N, genes).
        sheet: The sample sheet (for the expression file names in messages).

    Returns:
        The rows to keep (boolean, N) and one ``{sample, barcode, reason}`` record per dropped
        spot.

    Raises:
        HistofuseError: If a sample has no spot left.
    """
    bad_x = np.zeros(len(counts), dtype=bool)
    for x in features.arrays.values():
        bad_x |= ~finite_rows(x, features.batch_rows)
    bad_y = ~np.isfinite(counts.to_numpy()).all(axis=1)
    samples = features.index["sample"].to_numpy()
    dropped: list[dict[str, str]] = []
    for sample in pd.unique(samples):
        rows = samples == sample
        dropped += _drop_sample_spots(sample, rows, bad_x, bad_y, features.index, sheet)
    return ~(bad_x | bad_y), dropped


def _drop_sample_spots(
    sample: str,
    rows: np.ndarray,
    bad_x: np.ndarray,
    bad_y: np.ndarray,
    index: pd.DataFrame,
    sheet: pd.DataFrame,
) -> list[dict[str, str]]:
    """Logs and records one sample's non-finite spots; refuses a sample with none left."""
    barcodes = index["barcode"].to_numpy()
    dropped: list[dict[str, str]] = []
    for bad, what, fix in (
        (
            bad_y & rows,
            f"counts not finite (NaN/inf) in {sheet.at[sample, 'expression']}",
            "fix the expression file",
        ),
        (bad_x & ~bad_y & rows, "features not finite (NaN/inf) in the cache", "re-embed it"),
    ):
        if not bad.any():
            continue
        log.warning(
            "sample %s: %d spots left out, %s (e.g. barcode %r)",
            sample,
            bad.sum(),
            what,
            barcodes[bad][0],
        )
        dropped += [{"sample": sample, "barcode": b, "reason": what} for b in barcodes[bad]]
        if bad.sum() == rows.sum() or (rows & ~(bad_x | bad_y)).sum() == 0:
            kind = "finite counts" if "counts" in what else "finite features"
            raise HistofuseError(
                f"sample {sample}: no spot with {kind} ({what}); {fix} or leave the sample "
                "out of the task"
            )
    return dropped
