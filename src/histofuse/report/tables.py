"""Publication tables and paired statistics built from metrics files alone.

Every table starts from the per-(fold, gene) metrics written by ``histofuse fit``. Columns are
read defensively: rows are grouped by whichever of ``task``, ``features``, ``head`` and
``protocol`` are present, so metrics files with extra columns (or without ``protocol``) still
report.

* **Paired tests.** Within a *family* (same task, head and protocol) the reference is the single
  encoder with the highest ``pearson_mean``. Every other row is compared with it on the same
  (seed, fold, gene) Pearson values by the Wilcoxon signed-rank test (two-sided).
* **Bootstrap intervals.** A row's per-gene Pearson (mean over folds and seeds) is resampled over
  genes; the interval is the percentile bootstrap of the mean.
* **Relative gain.** For a multi-encoder row (``a+b``), the gain over the mean of its single
  encoders, ``(fused − mean(singles)) / mean(singles)``, and over the best single encoder of the
  family, both in percent. Fusion heads, which have no single-encoder rows, are compared with the
  ``linear`` head on the single encoders (else ``hest``), as the summary's ``single_mean`` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError
from histofuse.plan import names

GROUP_KEYS = ("task", "features", "head", "protocol")
REQUIRED = ("features", "gene", "pearson")


@dataclass(frozen=True)
class ReportOptions:
    """Settings of the report step (config section ``report``; defaults in the schema).

    Attributes:
        decimals: Digits after the point in Markdown, LaTeX and HTML tables.
        bootstrap: Bootstrap resamples for the confidence intervals (0 = none).
        confidence: Confidence level of the intervals.
        seed: Seed of the bootstrap.
        scatter_genes: Genes shown in the predicted-vs-true scatter of each task.
        heatmap_genes: At most this many genes (most variable across methods) in the heatmap.
        min_reference: Relative gains are not shown when their reference's |Pearson| is below this.
    """

    decimals: int
    bootstrap: int
    confidence: float
    seed: int
    scatter_genes: int
    heatmap_genes: int
    min_reference: float


def load_metrics(files: Sequence[str | Path]) -> pd.DataFrame:
    """Reads and concatenates metrics files.

    Raises:
        HistofuseError: If no file is given, a file is missing or unreadable, or lacks a
            required column.
    """
    if not files:
        raise HistofuseError("no metrics files to report; run the fit step first")
    frames = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise HistofuseError(f"metrics file {path} does not exist; run the fit step first")
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise HistofuseError(
                f"metrics file {path} is not readable parquet ({exc}); re-run its fit job"
            ) from exc
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise HistofuseError(
                f"metrics file {path} lacks column(s) {missing}; re-run its fit job"
            )
        frames.append(frame)
    metrics = pd.concat(frames, ignore_index=True)
    for col, default in (("fold", 0), ("seed", 0), ("constant", False)):
        if col not in metrics.columns:
            metrics[col] = default
    return metrics


def keys_of(frame: pd.DataFrame) -> list[str]:
    """The grouping keys present in a table, in canonical order."""
    return [k for k in GROUP_KEYS if k in frame.columns]


def family_keys(frame: pd.DataFrame) -> list[str]:
    """Keys that define a family of comparable rows (everything but ``features``)."""
    return [k for k in keys_of(frame) if k != "features"]


def is_learned(features: str) -> bool:
    """Whether a feature set is learned (PEKA: ``teacher``, ``<mode>:<encoder>``).

    Such rows are neither single encoders nor concatenations: never a reference, never fused.
    """
    return names.parse(features).is_peka


def encoder_count(features: str) -> int:
    """Encoders a feature set concatenates (a learned set, one representation, counts one)."""
    parsed = names.parse(features)
    return 1 if parsed.is_peka else len(parsed.encoders)


def _encoder_rows(frame: pd.DataFrame, multi: bool) -> pd.DataFrame:
    """Single-encoder (``multi=False``) or concatenated-encoder rows, learned sets left out."""
    fused = frame["features"].map(encoder_count) > 1
    learned = frame["features"].map(is_learned).astype(bool)
    return frame[(fused if multi else ~fused) & ~learned]


def gene_scores(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per-gene Pearson of every row: mean and std (ddof 0) over folds and seeds.

    Constant (gene, fold) pairs are left out, as in the summary.
    """
    keys = keys_of(metrics)
    valid = metrics[~metrics["constant"].astype(bool)]
    out = valid.groupby([*keys, "gene"], as_index=False).agg(
        pearson_mean=("pearson", "mean"),
        pearson_std=("pearson", lambda s: float(np.std(s, ddof=0))),
        n_folds=("pearson", "size"),
    )
    return out


def best_singles(summary: pd.DataFrame) -> pd.DataFrame:
    """The best single-encoder row of each family: family keys + ``reference``."""
    fam = family_keys(summary)
    singles = _encoder_rows(summary, multi=False)
    singles = singles.dropna(subset=["pearson_mean"])
    if singles.empty:
        return pd.DataFrame(columns=[*fam, "reference", "reference_pearson"])
    idx = (
        singles.groupby(fam)["pearson_mean"].idxmax() if fam else [singles["pearson_mean"].idxmax()]
    )
    best = singles.loc[list(np.atleast_1d(idx)), [*fam, "features", "pearson_mean"]]
    return best.rename(columns={"features": "reference", "pearson_mean": "reference_pearson"})


def pair_units(metrics: pd.DataFrame) -> list[str]:
    """Columns that identify one paired value: seed, fold, gene, and the test sample if present.

    Under the ``per-sample`` protocol a fold holds one value per test sample; pairing on
    (seed, fold, gene) alone would cross every sample with every other.
    """
    return ["seed", "fold", *(["sample"] if "sample" in metrics else []), "gene"]


def indexed_pearson(metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Non-constant Pearson values indexed by the row keys, with the pairing units as columns."""
    valid = metrics[~metrics["constant"].astype(bool)]
    return valid.set_index(keys)[[*pair_units(metrics), "pearson"]].sort_index()


def paired_difference(this: pd.DataFrame, refs: list[pd.DataFrame]) -> tuple[float, int, float]:
    """Mean paired difference of ``this`` minus the mean of ``refs``, pairs, Wilcoxon p.

    Pairs are the units (``pair_units``) present in ``this`` and in every reference. The p-value
    is NaN with fewer than two non-zero differences.
    """
    from scipy.stats import wilcoxon

    units = [c for c in this.columns if c != "pearson"]
    ref = refs[0][[*units, "pearson"]]
    for other in refs[1:]:
        ref = ref.merge(other[[*units, "pearson"]], on=units, suffixes=("", "_next"))
        ref = ref.assign(pearson=ref["pearson"] + ref.pop("pearson_next"))
    ref = ref.assign(pearson=ref["pearson"] / len(refs))
    pairs = this.merge(ref, on=units, suffixes=("", "_ref"))
    diff = (pairs["pearson"] - pairs["pearson_ref"]).to_numpy()
    delta = float(diff.mean()) if len(diff) else np.nan
    p = (
        float(wilcoxon(diff, zero_method="wilcox").pvalue)
        if np.count_nonzero(diff) >= 2
        else np.nan
    )
    return delta, len(diff), p


def paired_tests(metrics: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Wilcoxon signed-rank test of every row against its family's best single encoder.

    Pairs are the (seed, fold, [sample,] gene) values present and non-constant in both rows.

    Returns:
        One row per summary row: keys, ``reference``, ``delta_vs_best_single`` (mean paired
        difference), ``n_pairs`` and ``p_wilcoxon`` (NaN for the reference itself or when fewer
        than two non-zero differences exist).
    """
    keys = keys_of(summary)
    fam = family_keys(summary)
    best = best_singles(summary)
    indexed = indexed_pearson(metrics, keys)
    rows = []
    merged = (
        summary[keys].merge(best, on=fam, how="left")
        if fam
        else summary[keys].assign(reference=best["reference"].iloc[0] if len(best) else None)
    )
    for rec in merged.to_dict("records"):
        out = {k: rec[k] for k in keys}
        out["reference"] = rec.get("reference")
        out.update(delta_vs_best_single=np.nan, n_pairs=0, p_wilcoxon=np.nan)
        ref = rec.get("reference")
        if isinstance(ref, str) and ref != rec["features"]:
            this = indexed.loc[tuple(rec[k] for k in keys)]
            other = indexed.loc[tuple(ref if k == "features" else rec[k] for k in keys)]
            delta, n, p = paired_difference(this, [other])
            out.update(delta_vs_best_single=delta, n_pairs=n, p_wilcoxon=p)
        rows.append(out)
    return pd.DataFrame(rows)


def bootstrap_ci(genes: pd.DataFrame, keys: list[str], options: ReportOptions) -> pd.DataFrame:
    """Percentile bootstrap interval over genes of each row's mean per-gene Pearson."""
    from scipy.stats import bootstrap

    rows = []
    for key, grp in genes.groupby(keys, sort=False):
        values = grp["pearson_mean"].dropna().to_numpy()
        lo = hi = np.nan
        if options.bootstrap > 0 and len(values) >= 2 and np.ptp(values) > 0:
            res = bootstrap(
                (values,),
                np.mean,
                n_resamples=options.bootstrap,
                confidence_level=options.confidence,
                method="percentile",
                rng=np.random.default_rng(options.seed),
            )
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        rows.append(
            {**dict(zip(keys, np.atleast_1d(key), strict=True)), "ci_low": lo, "ci_high": hi}
        )
    return pd.DataFrame(rows, columns=[*keys, "ci_low", "ci_high"])


GAIN_COLUMNS = [
    "pearson_mean",
    "mean_single",
    "n_singles",
    "delta_vs_mean_single",
    "p_vs_mean_single",
    "gain_vs_mean_single_pct",
    "best_single",
    "best_single_pearson",
    "delta_vs_best_single",
    "p_vs_best_single",
    "gain_vs_best_single_pct",
    "single_head",
    "gain_suppressed",
]


def relative_change(value: float, reference: float, min_reference: float) -> float:
    """``100 (value − reference) / |reference|``; NaN when ``|reference| < min_reference``.

    The absolute denominator keeps the sign of the change when the reference is negative.
    """
    if not np.isfinite(reference) or abs(reference) < min_reference or reference == 0:
        return np.nan
    return 100 * (value - reference) / abs(reference)


def _singles_of(summary: pd.DataFrame, rec: dict, fam: list[str]) -> tuple:
    """(head, single rows of that head, the rows of the fused row's own encoders)."""
    same = summary
    for k in fam:
        if k != "head":
            same = same[same[k] == rec[k]]
    same = _encoder_rows(same, multi=False)
    encoders = list(names.parse(rec["features"]).encoders)
    heads = list(dict.fromkeys([rec["head"], "linear", "hest"])) if "head" in fam else [None]
    for head in [*heads, heads[0]]:
        singles = same if head is None else same[same["head"] == head]
        parts = singles[singles["features"].isin(encoders)]
        if len(parts) == len(encoders):
            break
    return head, singles, parts


def _paired_vs(indexed, keys, rec, head, features) -> tuple[float, int, float]:
    """Paired difference of a row against the mean of ``features`` under ``head``."""
    if indexed is None or not features:
        return np.nan, 0, np.nan
    this = indexed.loc[tuple(rec[k] for k in keys)]
    swap = {"head": head} if head is not None else {}
    refs = [indexed.loc[tuple({**rec, **swap, "features": f}[k] for k in keys)] for f in features]
    return paired_difference(this, refs)


def _gain_row(summary, rec, keys, indexed, min_reference) -> dict:
    fam = family_keys(summary)
    head, singles, parts = _singles_of(summary, rec, fam)
    mean_single = float(parts["pearson_mean"].mean()) if len(parts) else np.nan
    best = singles.dropna(subset=["pearson_mean"])
    best_row = best.loc[best["pearson_mean"].idxmax()] if len(best) else None
    best_val = float(best_row["pearson_mean"]) if best_row is not None else np.nan
    best_name = best_row["features"] if best_row is not None else None
    d_mean, _, p_mean = _paired_vs(indexed, keys, rec, head, list(parts["features"]))
    d_best, _, p_best = _paired_vs(indexed, keys, rec, head, [best_name] if best_name else [])
    value = rec["pearson_mean"]
    gain_mean = relative_change(value, mean_single, min_reference)
    gain_best = relative_change(value, best_val, min_reference)
    suppressed = [
        name
        for name, ref, gain in (("mean", mean_single, gain_mean), ("best", best_val, gain_best))
        if np.isfinite(ref) and np.isnan(gain)
    ]
    return {
        **{k: rec[k] for k in keys},
        "pearson_mean": value,
        "mean_single": mean_single,
        "n_singles": len(parts),
        "delta_vs_mean_single": d_mean if indexed is not None else value - mean_single,
        "p_vs_mean_single": p_mean,
        "gain_vs_mean_single_pct": gain_mean,
        "best_single": best_name,
        "best_single_pearson": best_val,
        "delta_vs_best_single": d_best if indexed is not None else value - best_val,
        "p_vs_best_single": p_best,
        "gain_vs_best_single_pct": gain_best,
        "single_head": head,
        "gain_suppressed": ", ".join(suppressed),
    }


def relative_gains(
    summary: pd.DataFrame, metrics: pd.DataFrame | None = None, min_reference: float = 0.0
) -> pd.DataFrame:
    """Absolute and relative gain of each multi-encoder row over its singles' mean and best.

    The single-encoder rows compared with are those of the same task and protocol with the same
    head; a fusion head that has no single-encoder rows (it needs two encoders) is compared with
    the ``linear`` head on the single encoders (Meta-Encoder's single-encoder probe, trained with
    the same settings), else with ``hest``. ``single_head`` names the head used.

    Args:
        summary: The summary table.
        metrics: Per-(fold, gene) metrics; with them the deltas are mean paired differences with
            a Wilcoxon signed-rank p-value, without them differences of the summary means.
        min_reference: A relative gain whose reference has a smaller |Pearson| is NaN and
            named in ``gain_suppressed`` (``mean``, ``best``).

    Returns:
        One row per multi-encoder row: keys and ``GAIN_COLUMNS``.
    """
    keys = keys_of(summary)
    indexed = indexed_pearson(metrics, keys) if metrics is not None else None
    multi = _encoder_rows(summary, multi=True)
    rows = [_gain_row(summary, r, keys, indexed, min_reference) for r in multi.to_dict("records")]
    return pd.DataFrame(rows, columns=[*keys, *GAIN_COLUMNS])


def method_label(rec: dict | pd.Series, keys: Sequence[str]) -> str:
    """A row label from the non-task keys: ``features · head`` (protocol added when not unique)."""
    return " · ".join(str(rec[k]) for k in keys if k != "task")


def label_keys(summary: pd.DataFrame) -> list[str]:
    """Keys needed to tell methods apart (``protocol`` only when it varies)."""
    keys = [k for k in keys_of(summary) if k != "task"]
    if "protocol" in keys and summary["protocol"].nunique() <= 1:
        keys.remove("protocol")
    return keys


def wide_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Methods × tasks of ``pearson_mean`` and ``pearson_std``, with averages and mean ranks.

    Methods evaluated on different tasks are not comparable: a method's average and mean rank
    are computed only against the methods of its *task set* (the methods with results on exactly
    the same tasks). Within a task set, a method's rank in a task is 1 for the best Pearson
    (ties share the mean of their ranks, as leaderboards do); ``mean_rank`` averages them.

    Returns:
        A frame indexed by method label with columns ``(task, "mean")`` and ``(task, "std")``
        for each task, then ``("Average", "mean")`` (mean over the method's tasks),
        ``("Average", "n_tasks")``, ``("Average", "mean_rank")`` and ``("Average", "tasks")``
        (its task set, comma-separated). Rows are grouped by task set, the sets covering the
        most tasks first, and sorted by average within a set.
    """
    lk = label_keys(summary)
    frame = summary.assign(method=[method_label(r, lk) for r in summary.to_dict("records")])
    task = frame["task"] if "task" in frame else pd.Series("all", index=frame.index)
    frame = frame.assign(task=task)
    mean = frame.pivot_table(index="method", columns="task", values="pearson_mean", sort=True)
    std = frame.pivot_table(index="method", columns="task", values="pearson_std", sort=True)
    tasks = mean.notna().apply(lambda r: ", ".join(mean.columns[r.to_numpy()]), axis=1)
    ranks = mean.groupby(tasks).rank(ascending=False, method="average")
    cols = {}
    for t in mean.columns:
        cols[(t, "mean")] = mean[t]
        cols[(t, "std")] = std[t]
    cols[("Average", "mean")] = mean.mean(axis=1)
    cols[("Average", "n_tasks")] = mean.notna().sum(axis=1)
    cols[("Average", "mean_rank")] = ranks.mean(axis=1)
    cols[("Average", "tasks")] = tasks
    wide = pd.DataFrame(cols)
    wide.columns = pd.MultiIndex.from_tuples(wide.columns)
    wide.index.name = "method"
    order = pd.DataFrame(
        {
            "n": -wide[("Average", "n_tasks")],
            "best": -wide[("Average", "mean")].groupby(tasks).transform("max"),
            "tasks": tasks,
            "mean": -wide[("Average", "mean")],
        }
    ).sort_values(["n", "best", "tasks", "mean"], na_position="last")
    return wide.loc[order.index]


def rank_marks(values: pd.Series) -> pd.Series:
    """``"best"``, ``"second"`` or ``""`` per value (ties share the rank; NaN never ranks)."""
    distinct = sorted(set(values.dropna().round(12)), reverse=True)
    marks = pd.Series("", index=values.index)
    if distinct:
        marks[values.round(12) == distinct[0]] = "best"
    if len(distinct) > 1:
        marks[values.round(12) == distinct[1]] = "second"
    return marks


def per_gene_table(genes: pd.DataFrame) -> pd.DataFrame:
    """Long per-gene table: keys, gene, Pearson mean/std over folds and seeds, n_folds."""
    keys = keys_of(genes)
    return genes.sort_values([*[k for k in keys if k != "features"], "gene", "features"])[
        [*keys, "gene", "pearson_mean", "pearson_std", "n_folds"]
    ].reset_index(drop=True)
