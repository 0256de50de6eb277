"""The report step: tables (CSV, Markdown, LaTeX), figures and one self-contained HTML page.

Everything is computed from metrics files (plus test predictions for the scatter and the tiling
QC thumbnails); features and heads are never read, so the report regenerates in seconds.

Files written into the output folder:

* ``summary.{csv,md,tex}`` — one row per (task, features, head, protocol): the summary contract
  plus ``ci_low``/``ci_high`` (bootstrap over genes), ``reference`` (the family's best single
  encoder), ``delta_vs_best_single`` and ``p_wilcoxon``.
* ``wide.{csv,md,tex}`` — methods × tasks with an average column; best bold, second underlined.
* ``gains.{csv,md,tex}`` — relative gain of each multi-encoder row over its singles' mean and over
  the best single encoder.
* ``per_gene.{csv,md,tex}`` — Pearson per gene and method.
* ``design.{csv,md}`` — the run's data and design (:mod:`histofuse.report.design`).
* ``bars``, ``heatmap``, ``scatter`` as ``.png`` and ``.svg``; ``index.html``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from histofuse.report import design, identical, plots, scatter
from histofuse.report.render import MISSING, Grid, fmt, fmt_ci, fmt_p, fmt_pm
from histofuse.report.summary import SUMMARY_COLUMNS, summarise
from histofuse.report.tables import (
    ReportOptions,
    bootstrap_ci,
    gene_scores,
    keys_of,
    label_keys,
    load_metrics,
    method_label,
    paired_tests,
    per_gene_table,
    rank_marks,
    relative_change,
    relative_gains,
    wide_table,
)

TABLES = ("summary", "wide", "gains", "per_gene")
FIGURES = ("bars", "heatmap", "scatter")


def parse_options(text: str | None) -> ReportOptions:
    """Report options from the config's ``report`` section (inline JSON or a file path).

    Keys left out take the schema's defaults.

    Raises:
        HistofuseError: For an unknown key or an invalid value, naming it.
    """
    from histofuse import settings

    doc = settings.load_document(text) if text else {}
    return settings.load(ReportOptions, "report", doc)


def with_all_keys(metrics: pd.DataFrame) -> pd.DataFrame:
    """Metrics with every grouping key (a missing one takes one placeholder value)."""
    for key, default in (("protocol", "default"), ("task", "all"), ("head", "default")):
        if key not in metrics:
            metrics = metrics.assign(**{key: default})
    return metrics


def full_summary(
    metrics: pd.DataFrame, options: ReportOptions
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The summary with intervals and paired tests, and the per-gene scores it came from.

    ``gain_vs_singles`` is NaN where the singles' mean is below ``options.min_reference``.
    """
    metrics = with_all_keys(metrics)
    summary = summarise(metrics)
    summary["gain_vs_singles"] = [
        relative_change(v, b, options.min_reference) / 100
        for v, b in zip(summary["pearson_mean"], summary["single_mean"], strict=True)
    ]
    keys = keys_of(summary)
    genes = gene_scores(metrics)
    summary = summary.merge(bootstrap_ci(genes, keys, options), on=keys, how="left")
    summary = summary.merge(paired_tests(metrics, summary), on=keys, how="left")
    extra = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
    return summary[[*SUMMARY_COLUMNS, *extra]], genes


def summary_grid(summary: pd.DataFrame, options: ReportOptions) -> Grid:
    """The summary table: per task, best row bold and second underlined."""
    d = options.decimals
    level = round(100 * options.confidence)
    grid = Grid(
        title="Summary",
        header=[
            "task", "features", "head", "protocol", "Pearson (mean ± std)",
            f"{level}% CI over genes", "Δ vs best single", "p (Wilcoxon)", "n_folds", "n_genes",
        ],
        align=list("llll") + list("rrrrrr"),
        note=(
            "Pearson: mean ± std over folds of the per-fold mean over genes; CI: percentile "
            "bootstrap over genes; p: Wilcoxon signed-rank against the best single encoder on "
            "the same genes and folds."
        ),
    )  # fmt: skip
    marks = summary.groupby("task")["pearson_mean"].transform(rank_marks)
    for rec, mark in zip(summary.to_dict("records"), marks, strict=True):
        ref = rec.get("reference")
        delta = "ref." if ref == rec["features"] else fmt(rec.get("delta_vs_best_single"), d)
        grid.add(
            [
                str(rec["task"]), str(rec["features"]), str(rec["head"]), str(rec["protocol"]),
                fmt_pm(rec["pearson_mean"], rec["pearson_std"], d),
                fmt_ci(rec.get("ci_low"), rec.get("ci_high"), d),
                delta, fmt_p(rec.get("p_wilcoxon")), str(rec["n_folds"]), str(rec["n_genes"]),
            ],
            ["", "", "", "", mark, "", "", "", "", ""],
        )  # fmt: skip
    return grid


def merged_grid(notes: pd.DataFrame) -> Grid:
    """The rows shown once because they carry the same result, and why."""
    grid = Grid(
        title="Rows shown once",
        header=["task", "shown as", "same result as", "why"],
        align=list("llll"),
        note=(
            "These rows have the same Pearson and MSE on every seed, fold and gene; the tables "
            "show each group once, its differing keys joined by =. summary.csv keeps every row "
            "(column identical_to)."
        ),
    )
    for rec in notes.to_dict("records"):
        grid.add([str(rec["task"]), rec["kept"], rec["merged"], rec["reason"]])
    return grid


def _wide_marks(wide: pd.DataFrame, tasks: list) -> dict[str, pd.Series]:
    """Marks per task column, and per task set for the average and the mean rank."""
    sets = wide[("Average", "tasks")]
    marks = {t: rank_marks(wide[(t, "mean")]) for t in tasks}
    marks["Average"] = wide[("Average", "mean")].groupby(sets).transform(rank_marks)
    marks["rank"] = (-wide[("Average", "mean_rank")]).groupby(sets).transform(rank_marks)
    return marks


def wide_grid(wide: pd.DataFrame, options: ReportOptions) -> Grid:
    """Methods × tasks (mean ± std), the average, the task count and the mean rank."""
    d = options.decimals
    tasks = [t for t in wide.columns.get_level_values(0).unique() if t != "Average"]
    grid = Grid(
        title="Pearson per task",
        header=["method", *tasks, "Average", "n tasks", "Mean rank"],
        align=["l"] + ["r"] * (len(tasks) + 3),
        note=(
            "Mean ± std over folds; best per task in bold, second underlined. Average and mean "
            "rank (1 = best in a task) compare a method only with the methods evaluated on the "
            "same tasks: rows are grouped by their set of tasks (n tasks, and the filled task "
            "columns), and marked within each group."
        ),
    )
    marks = _wide_marks(wide, tasks)
    for method in wide.index:
        cells = [str(method)]
        cells += [
            fmt_pm(wide.at[method, (t, "mean")], wide.at[method, (t, "std")], d) for t in tasks
        ]
        cells.append(fmt(wide.at[method, ("Average", "mean")], d))
        cells.append(str(int(wide.at[method, ("Average", "n_tasks")])))
        cells.append(fmt(wide.at[method, ("Average", "mean_rank")], 2))
        cell_marks = [marks[t][method] for t in [*tasks, "Average"]]
        grid.add(cells, ["", *cell_marks, "", marks["rank"][method]])
    return grid


def _single_label(rec: dict) -> str:
    """The best single encoder, with its head when that differs from the fused row's."""
    head = rec.get("single_head")
    same = not isinstance(head, str) or head == rec.get("head")
    return str(rec["best_single"]) + ("" if same else f" ({head})")


def _gain_cell(rec: dict, which: str) -> str:
    """A relative gain in %, or ``–†`` when its reference is too close to zero."""
    if which in str(rec.get("gain_suppressed", "")).split(", "):
        return MISSING + "†"
    return fmt(rec[f"gain_vs_{which}_single_pct"], 2)


def gains_grid(gains: pd.DataFrame, options: ReportOptions) -> Grid:
    """Absolute and relative gains of multi-encoder rows, with paired p-values."""
    d = options.decimals
    grid = Grid(
        title="Gain of fused feature sets",
        header=[
            "task", "features", "head", "protocol", "Pearson", "mean of its singles",
            "Δ vs mean", "p", "gain vs mean (%)", "best single", "Δ vs best", "p",
            "gain vs best (%)",
        ],
        align=list("llll") + list("rrrrrlrrr"),
        note=(
            "Δ: mean paired difference in Pearson over seeds, folds and genes; p: Wilcoxon "
            "signed-rank on those pairs; gain = (fused − reference) / |reference| × 100 %, per "
            "task, head and protocol; a fusion head is compared with the head in brackets on the "
            "single encoders."
        ),
    )  # fmt: skip
    for rec in gains.to_dict("records"):
        grid.add(
            [
                str(rec["task"]), str(rec["features"]), str(rec["head"]),
                str(rec.get("protocol", "")), fmt(rec["pearson_mean"], d),
                fmt(rec["mean_single"], d), fmt(rec["delta_vs_mean_single"], d),
                fmt_p(rec["p_vs_mean_single"]), _gain_cell(rec, "mean"), _single_label(rec),
                fmt(rec["delta_vs_best_single"], d), fmt_p(rec["p_vs_best_single"]),
                _gain_cell(rec, "best"),
            ]
        )  # fmt: skip
    if gains["gain_suppressed"].astype(bool).any():
        grid.footer.append(
            f"† relative gain not shown: the reference's |Pearson| is below "
            f"report.min_reference = {options.min_reference:g}, where a small difference reads "
            "as a large percentage; the absolute Δ and its p-value stand."
        )
    return grid


def per_gene_grids(
    genes: pd.DataFrame, summary: pd.DataFrame, options: ReportOptions
) -> list[Grid]:
    """Per task: genes × methods of per-gene Pearson (mean over folds); best per gene marked."""
    lk = label_keys(summary)
    grids = []
    for task in sorted(genes["task"].unique()):
        g = genes[genes["task"] == task]
        g = g.assign(method=[method_label(r, lk) for r in g.to_dict("records")])
        mat = g.pivot_table(index="gene", columns="method", values="pearson_mean")
        order = summary[summary["task"] == task]
        cols = [method_label(r, lk) for r in order.to_dict("records")]
        mat = mat[[c for c in cols if c in mat.columns]]
        mat = mat.loc[mat.mean(axis=1).sort_values(ascending=False).index]
        grid = Grid(
            title=f"Per-gene Pearson, {task}",
            header=["gene", *mat.columns],
            align=["l"] + ["r"] * mat.shape[1],
            note="Mean over folds; best method per gene in bold, second underlined.",
        )
        for gene, row in mat.iterrows():
            marks = rank_marks(row)
            grid.add(
                [str(gene), *[fmt(v, options.decimals) for v in row]],
                ["", *marks.tolist()],
            )
        grids.append(grid)
    return grids


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 2em}caption{text-align:left;font-weight:bold}
th,td{border-bottom:1px solid #ccc;padding:3px 8px;font-size:13px}td.num{text-align:right}
img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:13px}
.thumbs img{width:280px;margin:4px}
"""


def write_html(
    out: Path, grids: dict[str, list[Grid]], figures: dict[str, Path], qc: Sequence[Path]
) -> Path:
    """Writes ``index.html``: all tables and images inline (no external file is referenced)."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>histofuse report</title><style>{_CSS}</style></head><body>",
        "<h1>histofuse report</h1>",
    ]
    if grids.get("design"):
        parts.append("<h2 id='design'>Data and design</h2>")
        parts += [g.to_html(f"table-design-{i}") for i, g in enumerate(grids["design"])]
    for name, title in (("summary", "Summary"), ("wide", "Per task"), ("gains", "Fusion gains")):
        parts.append(f"<h2>{title}</h2>")
        parts += [
            g.to_html(f"table-{name}" + (f"-{i}" if i else "")) for i, g in enumerate(grids[name])
        ]
    captions = {
        "bars": "Pearson per method and task (error bars: std over folds)",
        "heatmap": "Per-gene Pearson (methods × most method-variable genes)",
        "scatter": "Predicted vs true expression, best genes of the best method per protocol",
    }
    for name, path in figures.items():
        parts.append(f"<h2>{captions[name]}</h2>")
        parts.append(f'<figure id="fig-{name}">{_img(path, captions[name])}</figure>')
    if qc:
        parts.append("<h2>Tiling QC</h2><div class='thumbs' id='fig-qc'>")
        parts += [_img(Path(p), Path(p).stem) for p in qc]
        parts.append("</div>")
    parts.append("<h2>Per gene</h2>")
    parts += [g.to_html(f"table-per-gene-{i}") for i, g in enumerate(grids["per_gene"])]
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _write_csvs(out: Path, summary, wide, gains, per_gene) -> None:
    """The machine-readable tables: every row, full precision."""
    p_text = summary["p_wilcoxon"].map(lambda v: "" if pd.isna(v) else f"{v:.6g}")
    summary.assign(p_wilcoxon=p_text).to_csv(out / "summary.csv", index=False, float_format="%.6f")
    flat = wide.copy()
    flat.columns = [
        f"{t}_{s}" if t != "Average" else ("average_mean" if s == "mean" else s)
        for t, s in wide.columns
    ]
    flat.to_csv(out / "wide.csv", float_format="%.6f")
    gains.to_csv(out / "gains.csv", index=False, float_format="%.6f")
    per_gene.to_csv(out / "per_gene.csv", index=False, float_format="%.6f")


_HEADINGS = {
    "summary": "# histofuse summary\n\n",
    "wide": "# histofuse: Pearson per task\n\n",
    "gains": "# histofuse: fusion gains\n\n",
    "per_gene": "# histofuse: per-gene Pearson\n\n",
}


def _write_tables(out: Path, grids: dict[str, list[Grid]]) -> None:
    """The Markdown and LaTeX tables, one file per table family."""
    for name in TABLES:
        (out / f"{name}.md").write_text(
            _HEADINGS[name] + "\n".join(g.to_markdown() for g in grids[name])
        )
        (out / f"{name}.tex").write_text(
            "\n".join(
                g.to_latex(f"{name.replace('_', '-')}-{i}") for i, g in enumerate(grids[name])
            )
        )


def _version() -> str:
    from histofuse import __version__

    return __version__


def build_report(
    metrics_files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    predictions: Sequence[str | Path] = (),
    qc: Sequence[str | Path] = (),
    options: ReportOptions | None = None,
    design_files: Sequence[str | Path] = (),
) -> pd.DataFrame:
    """Writes every table, figure and ``index.html`` into ``out_dir``; returns the summary.

    Args:
        metrics_files: ``results/metrics/{task}/{features}/{head}.parquet`` files.
        out_dir: Output folder (``results/report``).
        predictions: Predictions files; the scatter is drawn only when given.
        qc: Tiling QC thumbnails (PNG) to show in the HTML page.
        options: Table and figure settings.
        design_files: Feature store manifests, tile stats JSON (or shard tile folders) and the
            sample sheet, for the data-and-design tables (the tasks table needs none).

    Raises:
        HistofuseError: For missing or malformed metrics files or options.
    """
    options = options or parse_options(None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = with_all_keys(load_metrics(metrics_files))
    summary, genes = full_summary(metrics, options)
    groups = identical.identical_rows(metrics, summary)
    summary["identical_to"] = identical.identical_to(summary, groups)
    shown = identical.collapse(summary, groups)
    wide = wide_table(identical.collapse_methods(summary, groups))
    gains = relative_gains(summary, metrics, options.min_reference)
    gains["identical_to"] = identical.identical_to(gains, groups)
    _write_csvs(out, summary, wide, gains, per_gene_table(genes))

    notes = identical.merge_notes(groups)
    grids = {
        "summary": [summary_grid(shown, options)] + ([merged_grid(notes)] if len(notes) else []),
        "wide": [wide_grid(wide, options)],
        "gains": [gains_grid(identical.collapse(gains, groups), options)],
        "per_gene": per_gene_grids(genes, summary, options),
        "design": design.write_design(
            out, design.design_tables(metrics_files, design_files), _version()
        ),
    }
    _write_tables(out, grids)

    figures = {"bars": plots.bar_chart(summary, out / "bars")[0]}
    figures["heatmap"] = plots.heatmap(genes, summary, out / "heatmap", options.heatmap_genes)[0]
    if predictions:
        figures["scatter"] = scatter.scatter_best_genes(
            summary, genes, predictions, out / "scatter", options.scatter_genes
        )[0]
    write_html(out, grids, figures, [Path(p) for p in qc])
    from histofuse.report.missing import write_missing

    missing = write_missing(metrics_files, out / "missing.csv")
    if len(missing):
        import logging

        logging.getLogger(__name__).warning(
            "%d samples or spots are missing from the results; see %s",
            missing[["sample", "barcode"]].drop_duplicates().shape[0],
            out / "missing.csv",
        )
    return summary
