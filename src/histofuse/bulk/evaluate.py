"""The bulk fit stage: case-level splits, slide heads, per-case averaging and scoring.

As released (Meta-Encoder, WSI level): 10 repeats × 5 folds at case level; every slide of a
training case is a training row with its case's target; test predictions are averaged per case
(``groupby(case).mean()``) before scoring; Pearson per gene across the test cases of a fold,
mean over genes, then mean ± std over the 50 (repeat, fold) runs (``protocol = case``).

For cohorts too small for folds of several cases (the demo has three), ``split.scheme:
leave-one-case-out`` with ``split.scoring: pooled`` scores each repeat once, on the out-of-fold
predictions of all cases (``protocol = case-pooled``), over the genes chosen in every fold of
the repeat; repeats differ in the model seed. With so few training cases the top-k genes change
from fold to fold, so the demo chooses them once on all slides (``genes.select_on: all``, as
HEST-Benchmark's ``var_50genes.json``: the test cases' expression variance, not their values
against features, informs the choice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

log = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "abmil", "slide")
SCHEMES = ("case-kfold", "leave-one-case-out")
SCORINGS = ("per-fold", "pooled")
DEFAULT_BULK_TASK: dict[str, Any] = {
    "samples": None,
    "id_column": None,
    "genes": {"top_k": 50, "list": None, "select_on": "train"},
    "transform": "log2p1",
    "split": {"scheme": "case-kfold", "n_folds": 5, "n_repeats": 10, "scoring": "per-fold"},
    "seed": 1,
    "memory_mb": 256.0,
}


def case_splits(
    cases: Sequence[str], split: dict[str, Any], seed: int
) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Case-level folds: (repeat, fold, train cases, test cases).

    ``case-kfold`` shuffles the cases anew for each repeat (seed + repeat) and cuts
    ``n_folds`` folds; ``leave-one-case-out`` holds out each case once per repeat.

    Raises:
        HistofuseError: For an unknown scheme or too few cases.
    """
    from sklearn.model_selection import KFold, LeaveOneOut

    cases = np.asarray(sorted(set(cases)))
    scheme = split.get("scheme", "case-kfold")
    n_folds, n_repeats = int(split.get("n_folds", 5)), int(split.get("n_repeats", 10))
    if len(cases) < 2:
        raise HistofuseError("the bulk task needs at least two cases with targets and features")
    out = []
    for r in range(n_repeats):
        if scheme == "case-kfold":
            if n_folds > len(cases):
                raise HistofuseError(
                    f"bulk split n_folds={n_folds} exceeds the {len(cases)} cases; lower it or "
                    "use `scheme: leave-one-case-out` with `scoring: pooled`"
                )
            splitter = KFold(n_folds, shuffle=True, random_state=seed + r)
        elif scheme == "leave-one-case-out":
            splitter = LeaveOneOut()
        else:
            raise HistofuseError(
                f"unknown bulk split scheme {scheme!r}; choose one of {', '.join(SCHEMES)}"
            )
        for fold, (tr, te) in enumerate(splitter.split(cases)):
            out.append((r, fold, cases[tr], cases[te]))
    return out


def bulk_targets(
    table: pd.DataFrame, sheet: pd.DataFrame, samples: Sequence[str], how: str
) -> tuple[list[str], np.ndarray, pd.DataFrame, str]:
    """Matches a bulk table to slides and cases.

    Args:
        table: Ids × genes, raw values; ids are slide (``sample_id``) or case (``patient_id``)
            ids.
        sheet: The sample sheet.
        samples: Slides of the task.
        how: Target transform.

    Returns:
        Slides with a target, their case ids, the per-slide transformed targets (slides ×
        genes) and the level (``slide`` or ``case``).

    Raises:
        HistofuseError: If the table's ids match neither the sheet's slides nor its cases.
    """
    from histofuse.bulk.targets import transform_bulk

    ids = set(table.index)
    slide_ids, case_ids = set(sheet.index), set(sheet["patient_id"].astype(str))
    if ids <= slide_ids:
        level = "slide"
        slides = [s for s in samples if s in ids]
        rows = table.loc[slides]
    elif ids <= case_ids:
        level = "case"
        slides = [s for s in samples if str(sheet.at[s, "patient_id"]) in ids]
        rows = table.loc[[str(sheet.at[s, "patient_id"]) for s in slides]]
    else:
        unknown = sorted(ids - slide_ids - case_ids)[:3]
        raise HistofuseError(
            f"bulk table ids {unknown} are neither sample_id nor patient_id values of the sample "
            "sheet; the first column (or `id_column`) must hold one of them"
        )
    if not slides:
        raise HistofuseError("no slide of the bulk task has a row in the bulk table")
    values = pd.DataFrame(transform_bulk(rows.to_numpy(), how), index=slides, columns=table.columns)
    cases = sheet.loc[slides, "patient_id"].astype(str).to_numpy()
    return slides, cases, values, level


def make_slide_head(aggregation: str, head: str, params: dict[str, Any] | None, seed: int):
    """The estimator of a bulk job: :class:`SlideHead` or, for ``abmil``, ABMIL.

    Raises:
        HistofuseError: For an unknown head, aggregation or hyperparameter.
    """
    from histofuse.bulk.heads import ABMILRegressor, SlideHead
    from histofuse.heads.names import TORCH_HEADS

    if aggregation not in AGGREGATIONS:
        raise HistofuseError(
            f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}"
        )
    if head not in TORCH_HEADS:
        raise HistofuseError(f"unknown bulk head {head!r}; choose one of {', '.join(TORCH_HEADS)}")
    est = ABMILRegressor() if aggregation == "abmil" else SlideHead()
    params = dict(params or {})
    valid = {k for k in est.get_params() if k not in ("strategy", "blocks")}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise HistofuseError(
            f"bulk head {aggregation}-{head} has no hyperparameter(s) {', '.join(unknown)}; it "
            f"takes {', '.join(sorted(valid))}"
        )
    params.setdefault("random_state", seed)
    return est.set_params(strategy=head, **params)


def fit_bulk_task(
    task_name: str,
    task: dict[str, Any],
    samples_sheet: str | Path,
    table_path: str | Path,
    features_name: str,
    aggregation: str,
    head: str,
    head_params: dict[str, Any] | None,
    metrics_out: str | Path,
    predictions_out: str | Path,
    stores: Sequence[str | Path] = (),
    embeddings: Sequence[str | Path] = (),
) -> pd.DataFrame:
    """Runs one slide head over all case-level folds and writes metrics and predictions.

    Args:
        task_name: Task name (the report's ``task``).
        task: The task config (see :data:`DEFAULT_BULK_TASK`).
        samples_sheet: The sample sheet (slide → case).
        table_path: The bulk table.
        features_name: Feature set name (the report's ``features``).
        aggregation: ``mean`` or ``abmil`` (tile features from ``stores``) or ``slide`` (slide
            embeddings from ``embeddings`` files, concatenated in the given order).
        head: Slide head (``mlp`` or a fusion strategy).
        head_params: Its hyperparameters.
        metrics_out: Per-(repeat, fold, gene) metrics parquet.
        predictions_out: Per-(repeat, fold, case) predictions parquet.
        stores: Feature stores of the feature set.
        embeddings: Slide embedding tables (ids × dims).

    Returns:
        The metrics table written; the report's ``head`` is ``{aggregation}-{head}``.
    """
    from histofuse.bulk.bags import SlideBags
    from histofuse.bulk.targets import read_table, select_bulk_genes
    from histofuse.evaluation.metrics import per_gene_metrics
    from histofuse.fit import _write_parquet
    from histofuse.samples import load_samples

    t0 = time.perf_counter()
    task = {**DEFAULT_BULK_TASK, **task}
    split = {**DEFAULT_BULK_TASK["split"], **(task.get("split") or {})}
    genes_cfg = {**DEFAULT_BULK_TASK["genes"], **(task.get("genes") or {})}
    scoring = split.get("scoring", "per-fold")
    if scoring not in SCORINGS:
        raise HistofuseError(f"bulk `split.scoring` {scoring!r}: choose one of {SCORINGS}")
    if scoring == "per-fold" and split.get("scheme") == "leave-one-case-out":
        raise HistofuseError(
            "bulk split leave-one-case-out has one test case per fold, too few for a Pearson per "
            "fold; set `split.scoring: pooled`"
        )
    seed = int(task["seed"])
    sheet = load_samples(samples_sheet, check_files=False)
    names = list(task["samples"] or sheet.index)
    table = read_table(table_path, task.get("id_column"), what="bulk table")
    slides, cases, values, level = bulk_targets(table, sheet, names, task["transform"])

    bags = None
    if aggregation in ("mean", "abmil"):
        if not stores:
            raise HistofuseError(f"aggregation {aggregation!r} needs feature stores (--stores)")
        bags = SlideBags.open(stores, memory_mb=float(task["memory_mb"]))
        missing = [s for s in slides if s not in bags.ranges]
        if missing:
            raise HistofuseError(f"bulk task {task_name!r}: no cached tiles for slides {missing}")
        encoders, blocks = bags.encoders, bags.blocks
        x = bags.mean_pool(slides) if aggregation == "mean" else None
    else:
        if not embeddings:
            raise HistofuseError("aggregation 'slide' needs slide embedding files (--embeddings)")
        parts = []
        for path in embeddings:
            emb = read_table(path, what="slide embedding file")
            absent = [s for s in slides if s not in emb.index]
            if absent:
                raise HistofuseError(
                    f"slide embedding file {path} has no row for slides {absent[:3]}; its first "
                    "column must hold the sample_id of every slide of the task"
                )
            parts.append(emb.loc[slides].to_numpy(np.float32))
        encoders = [Path(p).stem for p in embeddings]
        blocks = [p.shape[1] for p in parts]
        x = np.concatenate(parts, axis=1)

    truth_cases = values.groupby(cases, sort=True).mean()
    metrics, predictions, fold_genes, pooled = [], [], {}, {}
    for rep, fold, train_cases, test_cases in case_splits(cases, split, seed):
        run_seed = seed + rep
        train = np.flatnonzero(np.isin(cases, train_cases))
        test = np.flatnonzero(np.isin(cases, test_cases))
        on_all = genes_cfg.get("select_on", "train") == "all"
        genes = select_bulk_genes(values, genes_cfg, np.arange(len(slides)) if on_all else train)
        fold_genes[f"{run_seed}/{fold}"] = genes
        y = values[genes].to_numpy(np.float32)
        est = make_slide_head(aggregation, head, head_params, run_seed)
        if "blocks" in est.get_params() and len(blocks) > 1:
            est.set_params(blocks=blocks)
        if aggregation == "abmil":
            est.fit([slides[i] for i in train], y[train], bags=bags)
            pred = est.predict([slides[i] for i in test], bags=bags)
        else:
            est.fit(x[train], y[train])
            pred = np.asarray(est.predict(x[test])).reshape(len(test), -1)
        # Several slides of one case: average their predictions, score the case once.
        pred_cases = pd.DataFrame(pred, columns=genes).groupby(cases[test], sort=True).mean()
        true_cases = truth_cases.loc[pred_cases.index, genes]
        n_slides = pd.Series(cases[test]).value_counts().reindex(pred_cases.index).to_numpy()
        p = pd.DataFrame({"seed": run_seed, "fold": fold, "case": pred_cases.index})
        p["n_slides"] = n_slides
        predictions.append(
            pd.concat(
                [
                    p,
                    pd.DataFrame(pred_cases.to_numpy(), columns=[f"pred:{g}" for g in genes]),
                    pd.DataFrame(true_cases.to_numpy(), columns=[f"true:{g}" for g in genes]),
                ],
                axis=1,
            )
        )
        if scoring == "per-fold":
            m = per_gene_metrics(true_cases.to_numpy(), pred_cases.to_numpy(), genes)
            metrics.append(_label(m, "case", fold, run_seed))
        else:
            pooled.setdefault(run_seed, []).append(pred_cases)
    for run_seed, frames in pooled.items():
        common = sorted(set.intersection(*(set(f.columns) for f in frames)))
        if not common:
            raise HistofuseError(
                "pooled scoring found no gene chosen in every fold; use `genes.list` or a "
                "larger `genes.top_k`"
            )
        pred_all = pd.concat([f[common] for f in frames]).sort_index()
        if pred_all.index.duplicated().any():
            raise HistofuseError("pooled scoring: a case was tested twice in one repeat")
        m = per_gene_metrics(truth_cases.loc[pred_all.index, common].to_numpy(), pred_all, common)
        metrics.append(_label(m, "case-pooled", 0, run_seed))

    head_label = f"{aggregation}-{head}"
    out = pd.concat(metrics, ignore_index=True)
    for col, val in (("task", task_name), ("features", features_name), ("head", head_label)):
        out.insert(0, col, val)
    out = out[
        [
            "task", "features", "head", "protocol", "fold", "seed", "sample", "gene",
            "pearson", "spearman", "mse", "constant", "n",
        ]
    ]  # fmt: skip
    meta = {
        "encoders": encoders,
        "blocks": blocks,
        "level": level,
        "slides": len(slides),
        "cases": len(truth_cases),
        "genes": fold_genes,
        "task": task,
        "aggregation": aggregation,
        "head_params": head_params or {},
        "seconds": time.perf_counter() - t0,
    }
    if bags is not None:
        meta.update(chunk_rows=bags.chunk_rows, max_rows_read=bags.max_rows_read)
    _write_parquet(out, metrics_out, meta)
    _write_parquet(pd.concat(predictions, ignore_index=True), predictions_out, {})
    log.info(
        "bulk fit %s/%s/%s: %d runs, %d slides of %d cases (%s-level targets) in %.1fs",
        task_name,
        features_name,
        head_label,
        out.groupby(["seed", "fold"]).ngroups,
        len(slides),
        len(truth_cases),
        level,
        time.perf_counter() - t0,
    )
    return out


def _label(m: pd.DataFrame, protocol: str, fold: int, seed: int) -> pd.DataFrame:
    m.insert(0, "sample", "")
    m.insert(0, "seed", seed)
    m.insert(0, "fold", fold)
    m.insert(0, "protocol", protocol)
    return m
