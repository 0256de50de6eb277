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
from typing import Any

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

log = logging.getLogger(__name__)

DEFAULT_TASK: dict[str, Any] = {
    "samples": None,
    "genes": {"top_k": 50, "list": None},
    "transform": "log1p",
    "split": {"scheme": "patient-kfold", "n_folds": 5},
    "seed": 1,
}


def load_feature_set(
    stores: Sequence[str | Path], samples: list[str]
) -> tuple[np.ndarray, pd.DataFrame, list[str]]:
    """Loads and concatenates (along features) the cached features of one or more encoders.

    Args:
        stores: Store paths; grouped by the encoder recorded in each store's provenance.
        samples: Samples to keep.

    Returns:
        Features (N, sum of dims) as float32, the index (``sample, barcode, x, y``), and the
        encoder names in concatenation order (sorted).

    Raises:
        HistofuseError: If the encoders do not cover the same tiles.
    """
    from histofuse.cache.store import open_features, read_provenance

    by_encoder: dict[str, list[Path]] = {}
    for store in stores:
        name = read_provenance(store)["encoder"]["name"]
        by_encoder.setdefault(name, []).append(Path(store))
    encoders = sorted(by_encoder)
    index, blocks = None, []
    for name in encoders:
        table = open_features(by_encoder[name])
        keep = table.index["sample"].isin(samples).to_numpy()
        idx = table.index[keep].reset_index(drop=True)
        x = np.asarray(table.features[np.flatnonzero(keep)].compute(), dtype=np.float32)
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
            x = x[pos]
        blocks.append(x)
    return np.concatenate(blocks, axis=1), index, encoders


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
) -> pd.DataFrame:
    """Runs one head over all folds of a spot-level task and writes metrics and predictions.

    Returns:
        The per-(fold, gene) metrics table that was written.
    """
    from histofuse.data.expression import read_counts, top_variable_genes, transform_counts
    from histofuse.evaluation.metrics import per_gene_metrics
    from histofuse.evaluation.splits import patient_splits
    from histofuse.heads.probes import make_head
    from histofuse.samples import load_samples

    t0 = time.perf_counter()
    task = {**DEFAULT_TASK, **task}
    sheet = load_samples(samples_sheet)
    names = task["samples"] or [s for s in sheet.index if sheet.at[s, "expression"]]
    unknown = sorted(set(names) - set(sheet.index))
    if unknown:
        raise HistofuseError(f"task {task_name!r} names samples not in the sheet: {unknown}")
    no_expr = [s for s in names if not sheet.at[s, "expression"]]
    if no_expr:
        raise HistofuseError(f"task {task_name!r}: samples without an expression file: {no_expr}")

    x, index, encoders = load_feature_set(stores, names)
    missing = sorted(set(names) - set(index["sample"]))
    if missing:
        raise HistofuseError(f"task {task_name!r}: no cached features for samples {missing}")

    counts, totals = [], []
    for sample in names:
        rows = index["sample"] == sample
        c = read_counts(sheet.at[sample, "expression"], index.loc[rows, "barcode"].to_numpy())
        totals.append(c.sum(axis=1).to_numpy())
        counts.append(c)
    counts_df = pd.concat(counts, ignore_index=True)
    if counts_df.isna().any().any():
        raise HistofuseError(f"task {task_name!r}: samples disagree on their gene lists")
    total = np.concatenate(totals)
    order = np.concatenate([np.flatnonzero(index["sample"] == s) for s in names])
    x, index = x[order], index.iloc[order].reset_index(drop=True)

    genes_cfg = task["genes"] or {}
    if genes_cfg.get("list"):
        genes = [g for g in genes_cfg["list"] if g in counts_df.columns]
        if len(genes) < len(genes_cfg["list"]):
            absent = sorted(set(genes_cfg["list"]) - set(counts_df.columns))
            raise HistofuseError(
                f"task {task_name!r}: genes not in the expression files: {absent[:5]}"
            )
    else:
        # HEST selects the most variable genes on all samples of the task (log1p values).
        genes = top_variable_genes(np.log1p(counts_df), int(genes_cfg.get("top_k", 50)))
    y = transform_counts(counts_df[genes].to_numpy(), task["transform"], total)
    patients = sheet.loc[index["sample"], "patient_id"].to_numpy()

    metrics, predictions = [], []
    seed = int(task["seed"])
    split = task["split"]
    for fold, (train, test) in enumerate(
        patient_splits(patients, split.get("scheme", "patient-kfold"), int(split.get("n_folds", 5)))
    ):
        est = make_head(head, head_params, seed=seed).fit(x[train], y[train])
        pred = np.asarray(est.predict(x[test])).reshape(len(test), -1)
        m = per_gene_metrics(y[test], pred, genes)
        m.insert(0, "fold", fold)
        metrics.append(m)
        p = index.iloc[test][["sample", "barcode"]].reset_index(drop=True)
        p.insert(0, "fold", fold)
        predictions.append(
            pd.concat(
                [
                    p,
                    pd.DataFrame(pred, columns=[f"pred:{g}" for g in genes]),
                    pd.DataFrame(y[test], columns=[f"true:{g}" for g in genes]),
                ],
                axis=1,
            )
        )
    out = pd.concat(metrics, ignore_index=True)
    out.insert(0, "seed", seed)
    for col, val in (
        ("task", task_name),
        ("features", features_name),
        ("head", head),
        ("protocol", "hest-pooled"),
    ):
        out.insert(0, col, val)
    out = out[
        [
            "task",
            "features",
            "head",
            "protocol",
            "fold",
            "seed",
            "gene",
            "pearson",
            "spearman",
            "mse",
            "constant",
            "n",
        ]
    ]
    out.attrs = {}
    _write_parquet(
        out,
        metrics_out,
        {
            "encoders": encoders,
            "genes": genes,
            "task": task,
            "head_params": head_params or {},
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
    pq.write_table(table, tmp)
    os.replace(tmp, path)
