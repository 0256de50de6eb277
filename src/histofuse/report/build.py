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
* ``bars``, ``heatmap``, ``scatter`` as ``.png`` and ``.svg``; ``index.html``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from histofuse.report import plots
from histofuse.report.render import Grid, fmt, fmt_p
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


def full_summary(
    metrics: pd.DataFrame, options: ReportOptions
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The summary with intervals and paired tests, and the per-gene scores it came from."""
    if "protocol" not in metrics:
        metrics = metrics.assign(protocol="default")
    if "task" not in metrics:
        metrics = metrics.assign(task="all")
    if "head" not in metrics:
        metrics = metrics.assign(head="default")
    summary = summarise(metrics)
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
                f"{fmt(rec['pearson_mean'], d)} ± {fmt(rec['pearson_std'], d)}",
                f"[{fmt(rec.get('ci_low'), d)}, {fmt(rec.get('ci_high'), d)}]",
                delta, fmt_p(rec.get("p_wilcoxon")), str(rec["n_folds"]), str(rec["n_genes"]),
            ],
            ["", "", "", "", mark, "", "", "", "", ""],
        )  # fmt: skip
    return grid


def wide_grid(wide: pd.DataFrame, options: ReportOptions) -> Grid:
    """Methods × tasks (mean ± std) plus the average; marks per column."""
    d = options.decimals
    tasks = [t for t in wide.columns.get_level_values(0).unique() if t != "Average"]
    grid = Grid(
        title="Pearson per task",
        header=["method", *tasks, "Average"],
        align=["l"] + ["r"] * (len(tasks) + 1),
        note="Mean ± std over folds; best per column in bold, second underlined.",
    )
    marks = {t: rank_marks(wide[(t, "mean")]) for t in [*tasks, "Average"]}
    for method in wide.index:
        cells = [str(method)]
        for t in tasks:
            m, s = wide.at[method, (t, "mean")], wide.at[method, (t, "std")]
            cells.append(f"{fmt(m, d)} ± {fmt(s, d)}")
        cells.append(fmt(wide.at[method, ("Average", "mean")], d))
        grid.add(cells, ["", *[marks[t][method] for t in [*tasks, "Average"]]])
    return grid


def _single_label(rec: dict) -> str:
    """The best single encoder, with its head when that differs from the fused row's."""
    head = rec.get("single_head")
    same = not isinstance(head, str) or head == rec.get("head")
    return str(rec["best_single"]) + ("" if same else f" ({head})")


def gains_grid(gains: pd.DataFrame, summary: pd.DataFrame, options: ReportOptions) -> Grid:
    """Relative gains of multi-encoder rows, with the paired p-value against the best single."""
    d = options.decimals
    grid = Grid(
        title="Relative gain of fused feature sets",
        header=[
            "task", "features", "head", "protocol", "Pearson", "mean of its singles",
            "gain vs mean (%)", "best single", "gain vs best (%)", "p (Wilcoxon)",
        ],
        align=list("llll") + list("rrrlrr"),
        note=(
            "Gain = (fused − reference) / reference × 100 %, per task, head and protocol; a "
            "fusion head is compared with the head in brackets on the single encoders."
        ),
    )  # fmt: skip
    keys = keys_of(gains)
    p = summary.set_index(keys)["p_wilcoxon"] if len(summary) else pd.Series(dtype=float)
    for rec in gains.to_dict("records"):
        grid.add(
            [
                str(rec["task"]), str(rec["features"]), str(rec["head"]),
                str(rec.get("protocol", "")), fmt(rec["pearson_mean"], d),
                fmt(rec["mean_single"], d),
                fmt(rec["gain_vs_mean_single_pct"], 2), _single_label(rec),
                fmt(rec["gain_vs_best_single_pct"], 2),
                fmt_p(p.get(tuple(rec[k] for k in keys))),
            ]
        )  # fmt: skip
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
    for name, title in (("summary", "Summary"), ("wide", "Per task"), ("gains", "Fusion gains")):
        parts.append(f"<h2>{title}</h2>")
        parts += [g.to_html(f"table-{name}") for g in grids[name]]
    captions = {
        "bars": "Pearson per method and task (error bars: std over folds)",
        "heatmap": "Per-gene Pearson (genes × methods)",
        "scatter": "Predicted vs true expression, best genes of the best method",
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


def build_report(
    metrics_files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    predictions: Sequence[str | Path] = (),
    qc: Sequence[str | Path] = (),
    options: ReportOptions | None = None,
) -> pd.DataFrame:
    """Writes every table, figure and ``index.html`` into ``out_dir``; returns the summary.

    Args:
        metrics_files: ``results/metrics/{task}/{features}/{head}.parquet`` files.
        out_dir: Output folder (``results/report``).
        predictions: Predictions files; the scatter is drawn only when given.
        qc: Tiling QC thumbnails (PNG) to show in the HTML page.
        options: Table and figure settings.

    Raises:
        HistofuseError: For missing or malformed metrics files or options.
    """
    options = options or parse_options(None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = load_metrics(metrics_files)
    summary, genes = full_summary(metrics, options)
    wide = wide_table(summary)
    gains = relative_gains(summary)
    per_gene = per_gene_table(genes)

    p_text = summary["p_wilcoxon"].map(lambda v: "" if pd.isna(v) else f"{v:.6g}")
    summary.assign(p_wilcoxon=p_text).to_csv(out / "summary.csv", index=False, float_format="%.6f")
    flat = wide.copy()
    flat.columns = [f"{t}_{s}" if t != "Average" else f"average_{s}" for t, s in wide.columns]
    flat.drop(columns="average_std").to_csv(out / "wide.csv", float_format="%.6f")
    gains.to_csv(out / "gains.csv", index=False, float_format="%.6f")
    per_gene.to_csv(out / "per_gene.csv", index=False, float_format="%.6f")

    grids = {
        "summary": [summary_grid(summary, options)],
        "wide": [wide_grid(wide, options)],
        "gains": [gains_grid(gains, summary, options)],
        "per_gene": per_gene_grids(genes, summary, options),
    }
    heading = {
        "summary": "# histofuse summary\n\n",
        "wide": "# histofuse: Pearson per task\n\n",
        "gains": "# histofuse: fusion gains\n\n",
        "per_gene": "# histofuse: per-gene Pearson\n\n",
    }
    for name in TABLES:
        (out / f"{name}.md").write_text(
            heading[name] + "\n".join(g.to_markdown() for g in grids[name])
        )
        (out / f"{name}.tex").write_text(
            "\n".join(
                g.to_latex(f"{name.replace('_', '-')}-{i}") for i, g in enumerate(grids[name])
            )
        )

    figures = {"bars": plots.bar_chart(summary, out / "bars")[0]}
    figures["heatmap"] = plots.heatmap(genes, summary, out / "heatmap", options.heatmap_genes)[0]
    if predictions:
        figures["scatter"] = plots.scatter_best_genes(
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
