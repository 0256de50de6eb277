"""The fit stage: one head on one feature set for one task, over all folds of the task's splits.

Features come from the cache only (never from slides). Targets are joined to features by
(sample, barcode). Outputs: per-gene metrics per fold, and the test predictions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

if TYPE_CHECKING:
    from histofuse.heads.streaming import LazyFeatures

log = logging.getLogger(__name__)

DEFAULT_TASK: dict[str, Any] = {
    "samples": None,
    "genes": {"top_k": 50, "list": None, "select_on": "train"},
    "transform": "log1p",
    "split": {"scheme": "patient-kfold", "n_folds": 5},
    "seed": 1,
    "seeds": None,
}
PROTOCOLS = ("hest-pooled", "per-sample")


def load_feature_set(
    stores: Sequence[str | Path],
    samples: list[str],
    with_blocks: bool = False,
    memory_budget_mb: float | None = None,
) -> Any:
    """Loads and concatenates (along features) the cached features of one or more encoders.

    Args:
        stores: Store paths; grouped by the encoder recorded in each store's provenance.
        samples: Samples to keep.
        with_blocks: Also return the per-encoder feature widths.
        memory_budget_mb: If the kept features, as float32, exceed this many MiB, they are not
            read: a :class:`~histofuse.heads.streaming.LazyFeatures` view is returned instead.

    Returns:
        Features (N, sum of dims) as float32 (or a lazy view of them), the index (``sample,
        barcode, x, y``), the encoder names in concatenation order (sorted), and with
        ``with_blocks`` the feature width of each encoder in that order (so a fusion head can
        split ``X``).

    Raises:
        HistofuseError: If the encoders do not cover the same tiles.
    """
    from histofuse.cache.store import READ_BLOCK_BYTES, open_features, read_provenance
    from histofuse.heads.streaming import BATCH_SHARE, LazyFeatures, exceeds_budget

    by_encoder: dict[str, list[Path]] = {}
    for store in stores:
        name = read_provenance(store)["encoder"]["name"]
        by_encoder.setdefault(name, []).append(Path(store))
    encoders = sorted(by_encoder)
    # Under a budget, rows are read in small batches, and a read decodes its whole dask block.
    block_bytes = (
        READ_BLOCK_BYTES
        if memory_budget_mb is None
        else int(memory_budget_mb * 2**20 / BATCH_SHARE)
    )
    index, arrays, rows = None, [], []
    for name in encoders:
        table = open_features(by_encoder[name], block_bytes=block_bytes)
        keep = table.index["sample"].isin(samples).to_numpy()
        idx = table.index[keep].reset_index(drop=True)
        r = np.flatnonzero(keep)
        key = pd.MultiIndex.from_frame(idx[["sample", "barcode"]])
        if key.duplicated().any():
            raise HistofuseError(f"encoder {name}: duplicate (sample, barcode) tiles in the cache")
        if index is None:
            index, ref = idx, key
        else:
            pos = key.get_indexer(ref)
            if (pos < 0).any() or len(key) != len(ref):
                raise HistofuseError(
                    f"encoder {name} does not cover the same tiles as {encoders[0]}; re-embed both "
                    "from the same tiles"
                )
            r = r[pos]
        arrays.append(table.features)
        rows.append(r)
    widths = [int(a.shape[1]) for a in arrays]
    x: Any = LazyFeatures(arrays, rows)
    if exceeds_budget(len(index), sum(widths), memory_budget_mb):
        log.info(
            "features of %d tiles × %d exceed the %s MiB budget: streaming them",
            len(index),
            sum(widths),
            memory_budget_mb,
        )
    else:
        x = x.read()
    if with_blocks:
        return x, index, encoders, widths
    return x, index, encoders


def fit_task(
    task_name: str,
    task: dict[str, Any],
    samples_sheet: str | Path,
    stores: Sequence[str | Path],
    features_name: str,
    head: str,
    head_params: dict[str, Any] | None,
    metrics_out: str | Path,
    predictions_out: str | Path,
    memory_budget_mb: float | None = None,
) -> pd.DataFrame:
    """Runs one head over all folds of a spot-level task and writes metrics and predictions.

    Metrics are written for two protocols: ``hest-pooled`` (per gene over all test spots of the
    fold; ``sample`` is empty) and ``per-sample`` (per gene within each test sample).

    When the task's features (float32) exceed ``memory_budget_mb`` MiB, they stay in the cache
    and the head streams them in batches (:mod:`histofuse.heads.streaming`).

    Returns:
        The per-(seed, fold, protocol, sample, gene) metrics table that was written.
    """
    from histofuse.data.expression import read_counts, transform_counts
    from histofuse.evaluation.splits import task_splits
    from histofuse.heads.probes import make_head
    from histofuse.heads.streaming import batch_rows_for, fit_predict, limit_malloc_arenas
    from histofuse.samples import joins_task, load_samples

    t0 = time.perf_counter()
    task = {**DEFAULT_TASK, **task}
    if task.get("hest_bench"):  # the folder's samples, official splits and gene list
        from histofuse.hest_bench import resolve_bench_task

        sheet, task = resolve_bench_task(task_name, task)
    else:
        sheet = load_samples(samples_sheet)
    names = task["samples"] or [s for s in sheet.index if joins_task(sheet, s, task_name)]
    unknown = sorted(set(names) - set(sheet.index))
    if unknown:
        raise HistofuseError(f"task {task_name!r} names samples not in the sheet: {unknown}")
    no_expr = [s for s in names if not sheet.at[s, "expression"]]
    if no_expr:
        raise HistofuseError(f"task {task_name!r}: samples without an expression file: {no_expr}")

    if memory_budget_mb is not None:
        limit_malloc_arenas()
    x, index, encoders, widths = load_feature_set(
        stores, names, with_blocks=True, memory_budget_mb=memory_budget_mb
    )
    batch_rows = batch_rows_for(memory_budget_mb, sum(widths)) if memory_budget_mb else None
    failed = recorded_failures(stores, names)
    if failed:
        for sample, reason in failed.items():
            log.warning("task %s: sample %s left out: %s", task_name, sample, reason)
        names = [s for s in names if s not in failed]
        x, index = x[index["sample"].isin(names).to_numpy()], index[index["sample"].isin(names)]
        index = index.reset_index(drop=True)
    missing = sorted(set(names) - set(index["sample"]))
    if missing:
        raise HistofuseError(f"task {task_name!r}: no cached features for samples {missing}")

    counts, totals = [], []
    for sample in names:
        rows = index["sample"] == sample
        c = read_counts(sheet.at[sample, "expression"], index.loc[rows, "barcode"].to_numpy())
        totals.append(c.sum(axis=1).to_numpy())
        counts.append(c)
    # Compared as sets: a NaN count is a bad spot (handled below), not a gene-list mismatch.
    genes_of = {s: set(c.columns) for s, c in zip(names, counts, strict=True)}
    odd = [s for s in names if genes_of[s] != genes_of[names[0]]]
    if odd:
        raise HistofuseError(
            f"task {task_name!r}: samples disagree on their gene lists ({odd[0]} vs {names[0]})"
        )
    counts_df = pd.concat(counts, ignore_index=True)
    total = np.concatenate(totals)
    order = np.concatenate([np.flatnonzero(index["sample"] == s) for s in names])
    x, index = x[order], index.iloc[order].reset_index(drop=True)
    keep, dropped = finite_spots(x, counts_df, index, sheet, batch_rows=batch_rows)
    if not keep.all():
        x, index, total = x[keep], index[keep].reset_index(drop=True), total[keep]
        counts_df = counts_df[keep].reset_index(drop=True)

    genes_cfg = {**DEFAULT_TASK["genes"], **(task["genes"] or {})}
    log_counts = np.log1p(counts_df)
    if genes_cfg.get("list"):
        absent = sorted(set(genes_cfg["list"]) - set(counts_df.columns))
        if absent:
            raise HistofuseError(
                f"task {task_name!r}: `genes.list` names genes not in the expression files: "
                f"{absent[:5]}; fix the list or the files"
            )
    patients = sheet.loc[index["sample"], "patient_id"].to_numpy()
    sample_ids = index["sample"].to_numpy()
    seeds = [int(v) for v in (task.get("seeds") or [task["seed"]])]

    metrics, predictions, fold_genes = [], [], {}
    for seed in seeds:
        split_ids = sheet.loc[sample_ids, "split_id"].to_numpy() if "split_id" in sheet else None
        folds = task_splits(
            task["split"] or {}, patients, sample_ids if split_ids is None else split_ids, seed
        )
        for fold, (train, test) in enumerate(folds):
            log.info(
                "seed %d, fold %d of %d: %d train, %d test spots",
                seed,
                fold + 1,
                len(folds),
                len(train),
                len(test),
            )
            genes = select_genes(log_counts, genes_cfg, train)
            fold_genes[f"{seed}/{fold}"] = genes
            y = transform_counts(counts_df[genes].to_numpy(), task["transform"], total)
            est = make_head(head, head_params, seed=seed)
            if "blocks" in est.get_params():
                est.set_params(blocks=widths)
            pred = fit_predict(est, x, y, train, test, batch_rows)
            fold_metrics, fold_pred = score_fold(y[test], pred, genes, index.iloc[test], seed, fold)
            metrics.append(fold_metrics)
            predictions.append(fold_pred)
    out = metrics_table(metrics, task_name, features_name, head)
    _write_parquet(
        out,
        metrics_out,
        {
            "encoders": encoders,
            "genes": fold_genes,
            "blocks": widths,
            "task": task,
            "head_params": head_params or {},
            "dropped_spots": dropped,
            "missing_samples": failed,
            "streamed": not isinstance(x, np.ndarray),
            "seconds": time.perf_counter() - t0,
        },
    )
    _write_parquet(pd.concat(predictions, ignore_index=True), predictions_out, {})
    log.info(
        "fit %s/%s/%s: %d folds in %.1fs",
        task_name,
        features_name,
        head,
        out["fold"].nunique(),
        time.perf_counter() - t0,
    )
    return out


def recorded_failures(stores: Sequence[str | Path], samples: list[str]) -> dict[str, str]:
    """Samples of the task that the tile step recorded as failed, with the reason.

    Such a sample (``tiling.on_error: record``) has no features in any store; its store's
    provenance says why (``failed_samples``).
    """
    from histofuse.cache.store import read_provenance

    out: dict[str, str] = {}
    for store in stores:
        for sample, reason in read_provenance(store).get("failed_samples", {}).items():
            if sample in samples:
                out[sample] = f"not tiled: {reason}"
    return out


METRICS_COLUMNS = [
    "task", "features", "head", "protocol", "fold", "seed", "sample", "gene",
    "pearson", "spearman", "mse", "constant", "n",
]  # fmt: skip
"""Columns of a metrics file, one row per (seed, fold, protocol, sample, gene)."""


def score_fold(
    y_test: np.ndarray,
    pred: np.ndarray,
    genes: list[str],
    test_index: pd.DataFrame,
    seed: int,
    fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores one fold's test predictions under both protocols.

    Args:
        y_test: Targets of the test spots (N, genes).
        pred: Predictions (N, genes).
        genes: Gene names of the columns.
        test_index: ``sample`` and ``barcode`` of the test spots.
        seed: Split seed.
        fold: Fold number.

    Returns:
        Per-gene metrics (``hest-pooled`` over all test spots, ``per-sample`` per test sample)
        and the predictions table (``seed, fold, sample, barcode, pred:*, true:*``).
    """
    from histofuse.evaluation.metrics import per_gene_metrics

    sample_ids = test_index["sample"].to_numpy()
    metrics = []
    for protocol, unit in _units(sample_ids):
        m = per_gene_metrics(y_test[unit], pred[unit], genes)
        m.insert(0, "sample", "" if protocol == "hest-pooled" else sample_ids[unit][0])
        m.insert(0, "protocol", protocol)
        m.insert(0, "fold", fold)
        m.insert(0, "seed", seed)
        metrics.append(m)
    p = test_index[["sample", "barcode"]].reset_index(drop=True)
    p.insert(0, "fold", fold)
    p.insert(0, "seed", seed)
    predictions = pd.concat(
        [
            p,
            pd.DataFrame(pred, columns=[f"pred:{g}" for g in genes]),
            pd.DataFrame(y_test, columns=[f"true:{g}" for g in genes]),
        ],
        axis=1,
    )
    return pd.concat(metrics, ignore_index=True), predictions


def metrics_table(
    metrics: list[pd.DataFrame], task_name: str, features_name: str, head: str
) -> pd.DataFrame:
    """Joins the folds' metrics and names the task, feature set and head of every row."""
    out = pd.concat(metrics, ignore_index=True)
    for col, val in (("task", task_name), ("features", features_name), ("head", head)):
        out.insert(0, col, val)
    out = out[METRICS_COLUMNS]
    out.attrs = {}
    return out


def finite_spots(
    x: np.ndarray | LazyFeatures,
    counts: pd.DataFrame,
    index: pd.DataFrame,
    sheet: pd.DataFrame,
    batch_rows: int | None = None,
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Finds the spots whose features and counts are all finite; logs and records the others.

    A spot with NaN or inf in its cached features or its expression counts cannot be fitted or
    scored, so it is left out of the task; each such spot is named in the returned records (saved
    in the metrics file's metadata) and every affected sample gets one warning.

    Args:
        x: Features (N, D), rows aligned with ``counts`` and ``index``, in memory or left in
            the cache.
        counts: Raw counts (N, genes).
        index: ``sample`` and ``barcode`` of each row.
        sheet: The sample sheet (for the expression file names in messages).
        batch_rows: Rows read at once from features left in the cache.

    Returns:
        The rows to keep (boolean, N) and one ``{sample, barcode, reason}`` record per dropped
        spot.

    Raises:
        HistofuseError: If a sample has no spot left.
    """
    if isinstance(x, np.ndarray):
        bad_x = ~np.isfinite(x).all(axis=1)
    else:  # features left in the cache are checked batch by batch, within the memory budget
        batches = x.batches(batch_rows or len(x))
        bad_x = ~np.concatenate([np.isfinite(b).all(axis=1) for b in batches])
    bad_y = ~np.isfinite(counts.to_numpy()).all(axis=1)
    samples = index["sample"].to_numpy()
    barcodes = index["barcode"].to_numpy()
    dropped: list[dict[str, str]] = []
    for sample in pd.unique(samples):
        rows = samples == sample
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
    return ~(bad_x | bad_y), dropped


def select_genes(
    log_counts: pd.DataFrame, genes_cfg: dict[str, Any], train: np.ndarray
) -> list[str]:
    """The target genes of one fold.

    Args:
        log_counts: ``log1p`` raw counts, spots × all genes.
        genes_cfg: ``list`` (fixed genes), else ``top_k`` most variable genes selected on the
            training spots (``select_on: train``) or on all spots of the task (``select_on: all``,
            HEST-Benchmark's ``var_50genes.json``; test spots then inform the selection).
        train: Training rows of the fold.
    """
    from histofuse.data.expression import top_variable_genes

    if genes_cfg.get("list"):
        return list(genes_cfg["list"])
    rows = log_counts if genes_cfg.get("select_on", "train") == "all" else log_counts.iloc[train]
    return top_variable_genes(rows, int(genes_cfg.get("top_k", 50)))


def _units(test_samples: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Evaluation units of a fold: all test spots pooled (HEST), then each test sample alone."""
    units = [("hest-pooled", np.arange(len(test_samples)))]
    for sample in pd.unique(test_samples):
        units.append(("per-sample", np.flatnonzero(test_samples == sample)))
    return units


def _write_parquet(df: pd.DataFrame, path: str | Path, meta: dict[str, Any]) -> None:
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"histofuse": json.dumps(meta, default=str).encode()}
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
