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

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from histofuse import settings
from histofuse.errors import HistofuseError
from histofuse.evaluation.runner import Fold
from histofuse.settings import BulkTask, Genes

if TYPE_CHECKING:
    from histofuse.bulk.bags import SlideBags

AGGREGATIONS = ("mean", "abmil", "slide")
SCHEMES = ("case-kfold", "leave-one-case-out")


def case_splits(
    cases: Sequence[str], split: Mapping[str, Any], seed: int
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


@dataclass
class SlideRows:
    """Slides of a bulk task, each with its case's target, scored per case.

    The ``rows`` strategy of :func:`histofuse.evaluation.runner.run_task`: a fold's test
    predictions are averaged per case before scoring; under ``split.scoring: pooled`` each
    repeat is scored once, on the out-of-fold predictions of all its folds.

    Attributes:
        task: The task's settings.
        slides: Slides with a target (sample ids).
        cases: Case id of each slide.
        values: Transformed targets, slides × all genes of the table.
        level: Whether the table's ids are slides or cases (``slide``, ``case``).
        failed: Slides left out as failed at tiling, with the reason.
    """

    task: BulkTask
    slides: list[str]
    cases: np.ndarray
    values: pd.DataFrame
    level: str
    failed: dict[str, str] = field(default_factory=dict)
    pooled: dict[int, list[pd.DataFrame]] = field(default_factory=dict)
    genes_source: ClassVar[str] = "table"

    @property
    def genes(self) -> Genes:
        """The task's gene settings."""
        return self.task.genes

    @property
    def gene_basis(self) -> pd.DataFrame:
        """Transformed targets of every slide."""
        return self.values

    @functools.cached_property
    def truth(self) -> pd.DataFrame:
        """Targets per case (the mean of its slides'), cases sorted."""
        return self.values.groupby(self.cases, sort=True).mean()

    def folds(self) -> list[Fold]:
        """Case-level folds; a repeat's seed is ``seed + repeat``."""
        out = []
        split = settings.to_dict(self.task.split)
        for rep, fold, train_cases, test_cases in case_splits(self.cases, split, self.task.seed):
            train = np.flatnonzero(np.isin(self.cases, train_cases))
            test = np.flatnonzero(np.isin(self.cases, test_cases))
            out.append(Fold(self.task.seed + rep, fold, train, test))
        return out

    def targets(self, genes: list[str]) -> np.ndarray:
        """Targets of every slide (slides × genes) as float32."""
        return self.values[genes].to_numpy(np.float32)

    def score(
        self, fold: Fold, genes: list[str], y: np.ndarray, pred: np.ndarray
    ) -> tuple[list[pd.DataFrame], pd.DataFrame]:
        """Averages the test slides' predictions per case; scores the fold or keeps it."""
        from histofuse.evaluation.metrics import per_gene_metrics
        from histofuse.evaluation.scoring import label, prediction_frame

        test_cases = self.cases[fold.test]
        # Several slides of one case: average their predictions, score the case once.
        pred_cases = pd.DataFrame(pred, columns=genes).groupby(test_cases, sort=True).mean()
        true_cases = self.truth.loc[pred_cases.index, genes]
        keys = pd.DataFrame({"seed": fold.seed, "fold": fold.fold, "case": pred_cases.index})
        keys["n_slides"] = pd.Series(test_cases).value_counts().reindex(pred_cases.index).to_numpy()
        predictions = prediction_frame(keys, pred_cases.to_numpy(), true_cases.to_numpy(), genes)
        if self.task.split.scoring == "pooled":
            self.pooled.setdefault(fold.seed, []).append(pred_cases)
            return [], predictions
        m = per_gene_metrics(true_cases.to_numpy(), pred_cases.to_numpy(), genes)
        return [label(m, "case", fold.fold, fold.seed)], predictions

    def finish(self) -> list[pd.DataFrame]:
        """Pooled scoring: each repeat once, over the genes chosen in all of its folds.

        Raises:
            HistofuseError: If no gene was chosen in every fold, or a case was tested twice.
        """
        from histofuse.evaluation.metrics import per_gene_metrics
        from histofuse.evaluation.scoring import label

        metrics = []
        for seed, frames in self.pooled.items():
            common = sorted(set.intersection(*(set(f.columns) for f in frames)))
            if not common:
                raise HistofuseError(
                    "pooled scoring found no gene chosen in every fold; use `genes.list` or a "
                    "larger `genes.top_k`"
                )
            pred_all = pd.concat([f[common] for f in frames]).sort_index()
            if pred_all.index.duplicated().any():
                raise HistofuseError("pooled scoring: a case was tested twice in one repeat")
            truth = self.truth.loc[pred_all.index, common].to_numpy()
            metrics.append(label(per_gene_metrics(truth, pred_all, common), "case-pooled", 0, seed))
        return metrics

    def meta(self) -> dict[str, Any]:
        """The task's settings, target level, counts of slides and cases, failed slides."""
        return {
            "task": settings.to_dict(self.task),
            "level": self.level,
            "slides": len(self.slides),
            "cases": len(self.truth),
            "missing_samples": self.failed,
        }


@dataclass
class SlideModel:
    """A slide head on slide vectors (mean-pooled bags, slide embeddings) or on bags (ABMIL).

    Attributes:
        aggregation: ``mean``, ``abmil`` or ``slide``.
        head_name: Slide head (``mlp`` or a fusion strategy).
        params: Its hyperparameters.
        slides: The task's slides, in row order.
        encoders: Encoders (or embedding files) of the features, in concatenation order.
        blocks: Feature width of each.
        x: Slide vectors (slides × dims); ``None`` for ABMIL.
        bags: The tile bags (``mean``, ``abmil``).
    """

    aggregation: str
    head_name: str
    params: dict[str, Any]
    slides: list[str]
    encoders: list[str]
    blocks: list[int]
    x: np.ndarray | None = None
    bags: SlideBags | None = None

    @property
    def head(self) -> str:
        """The report's head: ``{aggregation}-{head}``."""
        return f"{self.aggregation}-{self.head_name}"

    def fit_predict(self, fold: Fold, y: np.ndarray, genes: list[str]) -> np.ndarray:
        """Fits a fresh slide head (seeded by the fold's seed) and predicts the test slides."""
        est = make_slide_head(self.aggregation, self.head_name, self.params, fold.seed)
        if "blocks" in est.get_params() and len(self.blocks) > 1:
            est.set_params(blocks=self.blocks)
        if self.x is None:
            est.fit([self.slides[i] for i in fold.train], y[fold.train], bags=self.bags)
            return est.predict([self.slides[i] for i in fold.test], bags=self.bags)
        est.fit(self.x[fold.train], y[fold.train])
        return np.asarray(est.predict(self.x[fold.test])).reshape(len(fold.test), -1)

    def meta(self) -> dict[str, Any]:
        """Encoders, blocks, aggregation, hyperparameters and, for bags, what was read at once."""
        meta = {
            "encoders": self.encoders,
            "blocks": self.blocks,
            "aggregation": self.aggregation,
            "head_params": self.params,
        }
        if self.bags is not None:
            meta.update(chunk_rows=self.bags.chunk_rows, max_rows_read=self.bags.max_rows_read)
        return meta


def slide_model(
    task_name: str,
    rows: SlideRows,
    aggregation: str,
    head: str,
    head_params: dict[str, Any],
    stores: Sequence[str | Path],
    embeddings: Sequence[str | Path],
) -> SlideModel:
    """The slide features of a bulk job and its head.

    Raises:
        HistofuseError: If the aggregation's inputs are missing or lack slides of the task.
    """
    from histofuse.bulk.bags import SlideBags
    from histofuse.bulk.targets import read_slide_embeddings

    slides = rows.slides
    model = SlideModel(aggregation, head, head_params, slides, [], [])
    if aggregation == "slide":
        if not embeddings:
            raise HistofuseError("aggregation 'slide' needs slide embedding files (--embeddings)")
        model.x, model.blocks = read_slide_embeddings(embeddings, slides)
        model.encoders = [Path(p).stem for p in embeddings]
        return model
    if not stores:
        raise HistofuseError(f"aggregation {aggregation!r} needs feature stores (--stores)")
    bags = SlideBags.open(stores, memory_mb=float(rows.task.memory_mb))
    missing = [s for s in slides if s not in bags.ranges]
    if missing:
        raise HistofuseError(f"bulk task {task_name!r}: no cached tiles for slides {missing}")
    model.bags, model.encoders, model.blocks = bags, bags.encoders, bags.blocks
    model.x = bags.mean_pool(slides) if aggregation == "mean" else None
    return model


def fit_bulk_task(
    task_name: str,
    task: BulkTask,
    samples_sheet: str | Path,
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
        task: The task's settings (``task.table`` is the bulk table).
        samples_sheet: The sample sheet (slide → case).
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

    Raises:
        HistofuseError: For leave-one-case-out splits scored per fold.
    """
    from histofuse.bulk.targets import read_table
    from histofuse.evaluation.features import leave_out_failed
    from histofuse.evaluation.runner import Outputs, run_task
    from histofuse.samples import load_samples

    t0 = time.perf_counter()
    if task.split.scoring == "per-fold" and task.split.scheme == "leave-one-case-out":
        raise HistofuseError(
            "bulk split leave-one-case-out has one test case per fold, too few for a Pearson per "
            "fold; set `split.scoring: pooled`"
        )
    sheet = load_samples(samples_sheet, check_files=False)
    names, failed = leave_out_failed(task_name, stores, list(task.samples or sheet.index))
    table = read_table(task.table, task.id_column, what="bulk table")
    slides, cases, values, level = bulk_targets(table, sheet, names, task.transform)
    rows = SlideRows(task, slides, cases, values, level, failed)
    model = slide_model(task_name, rows, aggregation, head, head_params or {}, stores, embeddings)
    out = Outputs(task_name, features_name, metrics_out, predictions_out)
    return run_task(rows, model, out, t0)
