"""Report figures with matplotlib (Agg backend, no display needed), each saved as PNG and SVG.

Every figure is :data:`WIDTH_IN` inches wide, so it prints at page width with its text at
:data:`FONT_PT` points or more; its height grows with the number of methods, genes and tasks.
Layouts are constrained (``layout="constrained"``), so no text leaves the canvas, and the PNG is
:data:`WIDTH_IN` × :data:`DPI` pixels wide. ``*_figure`` functions return the figure (for tests
that inspect its geometry); the others save and close it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.report.tables import encoder_count, is_learned, label_keys, method_label

WIDTH_IN = 7.0
DPI = 200
FONT_PT = 8
ROW_IN = 0.2  # height of a bar or heatmap row, enough for one line of FONT_PT text
CELL_IN = 0.16  # width of a heatmap column, enough for one rotated line of FONT_PT text
KINDS = {
    "single": ("#1f77b4", "one encoder"),
    "fused": ("#d62728", "fused: concatenated encoders"),
    "learned": ("#2ca02c", "learned feature set (PEKA)"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.hashsalt": "histofuse",
            "font.size": FONT_PT,
            "axes.titlesize": FONT_PT + 1,
            "axes.labelsize": FONT_PT,
            "xtick.labelsize": FONT_PT,
            "ytick.labelsize": FONT_PT,
            "legend.fontsize": FONT_PT,
            "figure.titlesize": FONT_PT + 1,
        }
    )
    return plt


def save(fig, stem: Path) -> list[Path]:
    """Saves a figure as ``stem.png`` (:data:`DPI`) and ``stem.svg``; closes it.

    The canvas is kept as laid out (no tight crop), so the PNG is exactly the figure's width.
    """
    plt = _pyplot()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=DPI)
    fig.savefig(paths[1], metadata={"Date": None})
    plt.close(fig)
    return paths


def text_width_in(texts: Sequence[str], size: float = FONT_PT) -> float:
    """Width in inches of the widest of ``texts`` (each line of it) set at ``size`` points."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop, ttp = FontProperties(size=size), TextToPath()
    lines = [line for t in texts for line in str(t).splitlines()]
    widths = [ttp.get_text_width_height_descent(s, prop, ismath=False)[0] for s in lines]
    return max(widths, default=0.0) / 72


def method_kind(features: str) -> str:
    """``single``, ``fused`` or ``learned``: the colour class of a feature set."""
    if is_learned(features):
        return "learned"
    return "fused" if encoder_count(features) > 1 else "single"


def _tasks(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["task"].unique()) if "task" in frame else ["all"]


def _of_task(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    return frame[frame["task"] == task] if "task" in frame else frame


def _bar_rows(summary: pd.DataFrame, task: str, keys: list[str]) -> pd.DataFrame:
    rows = _of_task(summary, task).sort_values("pearson_mean", ascending=False)
    return rows.assign(
        label=[method_label(r, keys) for r in rows.to_dict("records")],
        kind=rows["features"].map(method_kind),
    )


def bar_figure(summary: pd.DataFrame):
    """Mean Pearson ± std over folds per method: one horizontal bar per method, a panel per task.

    Method names are tick labels on the left, one row each, so they never overprint however
    many methods there are; the colours (one encoder, fused, learned) are in the legend.
    """
    from matplotlib.patches import Patch

    plt = _pyplot()
    keys = label_keys(summary)
    panels = [(task, _bar_rows(summary, task, keys)) for task in _tasks(summary)]
    heights = [ROW_IN * len(rows) + 0.75 for _, rows in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(WIDTH_IN, sum(heights) + 0.4),
        height_ratios=heights,
        layout="constrained",
        squeeze=False,
    )
    for ax, (task, rows) in zip(axes[:, 0], panels, strict=True):
        y = np.arange(len(rows))
        colors = [KINDS[k][0] for k in rows["kind"]]
        ax.barh(y, rows["pearson_mean"], xerr=rows["pearson_std"], color=colors, capsize=2)
        ax.set_yticks(y, rows["label"])
        ax.set_ylim(len(rows) - 0.5, -0.5)  # best on top
        ax.axvline(0, color="black", linewidth=0.5)
        ax.set_title(task)
        ax.set_xlabel("Pearson (mean ± std over folds)")
    used = set().union(*(set(rows["kind"]) for _, rows in panels))
    handles = [Patch(color=c, label=text) for k, (c, text) in KINDS.items() if k in used]
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), frameon=False)
    return fig


def bar_chart(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """Saves :func:`bar_figure` as ``stem.png`` and ``stem.svg``."""
    return save(bar_figure(summary), stem)


def _gene_matrix(genes: pd.DataFrame, summary: pd.DataFrame, task: str, keys: list[str]):
    """Methods (best first) × genes of per-gene Pearson (mean over folds) of one task."""
    g = _of_task(genes, task)
    g = g.assign(method=[method_label(r, keys) for r in g.to_dict("records")])
    mat = g.pivot_table(index="method", columns="gene", values="pearson_mean")
    order = _of_task(summary, task).sort_values("pearson_mean", ascending=False)
    rows = [method_label(r, keys) for r in order.to_dict("records")]
    return mat.loc[[r for r in rows if r in mat.index]]


def colour_range(values: np.ndarray) -> tuple[float, float]:
    """A colour scale that covers every value: the data's range rounded out to 0.1, in [-1, 1]."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return -1.0, 1.0
    lo = max(-1.0, math.floor(finite.min() * 10) / 10)
    hi = min(1.0, math.ceil(finite.max() * 10) / 10)
    return (lo, hi) if hi > lo else (lo - 0.1, hi + 0.1)


def heatmap_genes_fitting(methods: Sequence[str]) -> int:
    """How many gene columns fit beside the method labels at page width."""
    room = WIDTH_IN - text_width_in(methods) - 1.4  # colour bar, its label and margins
    return max(1, int(room / CELL_IN))


def _heatmap_title(task: str, shown: int, total: int, asked: int) -> str:
    """Two short lines: which genes are shown, and why not all of them."""
    if shown == total:
        return f"{task}: all {total} genes"
    why = "report.heatmap_genes" if shown == asked else "all that fit the page width"
    return f"{task}: {shown} of {total} genes ({why}),\nthe most variable across methods"


def heatmap_figure(genes: pd.DataFrame, summary: pd.DataFrame, max_genes: int):
    """Per-gene Pearson, methods × genes, one panel per task; the colour bar covers the data.

    Methods are rows (labels never overprint); genes are columns, as many as ``max_genes`` and
    the page width allow, chosen as the most method-variable and sorted by their mean.
    """
    plt = _pyplot()
    keys = label_keys(summary)
    mats = {t: _gene_matrix(genes, summary, t, keys) for t in _tasks(genes)}
    fit = heatmap_genes_fitting([m for mat in mats.values() for m in mat.index])
    n_genes = min(max_genes, fit)
    shown = {}
    for task, mat in mats.items():
        top = mat.std(axis=0).sort_values(ascending=False).index[:n_genes]
        sub = mat[top]
        shown[task] = sub[sub.mean(axis=0).sort_values(ascending=False).index]
    lo, hi = colour_range(np.concatenate([m.to_numpy().ravel() for m in shown.values()]))
    gene_in = text_width_in([g for m in shown.values() for g in m.columns])
    heights = [ROW_IN * len(m) + gene_in + 0.6 for m in shown.values()]
    fig, axes = plt.subplots(
        len(shown), 1, figsize=(WIDTH_IN, sum(heights)), height_ratios=heights,
        layout="constrained", squeeze=False,
    )  # fmt: skip
    image = None
    for ax, (task, mat) in zip(axes[:, 0], shown.items(), strict=True):
        image = ax.imshow(
            mat.to_numpy(), aspect="auto", cmap="viridis", vmin=lo, vmax=hi,
            interpolation="nearest",
        )  # fmt: skip
        ax.set_yticks(range(len(mat)), mat.index)
        ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=90)
        ax.set_title(_heatmap_title(task, mat.shape[1], mats[task].shape[1], max_genes))
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), label="Pearson (mean over folds)")
    return fig


def heatmap(genes: pd.DataFrame, summary: pd.DataFrame, stem: Path, max_genes: int) -> list[Path]:
    """Saves :func:`heatmap_figure` as ``stem.png`` and ``stem.svg``."""
    return save(heatmap_figure(genes, summary, max_genes), stem)
