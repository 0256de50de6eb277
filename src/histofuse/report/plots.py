"""Report figures with matplotlib (Agg backend, no display needed), each saved as PNG and SVG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError
from histofuse.report.tables import encoder_count, label_keys, method_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "histofuse", "font.size": 9})
    return plt


def save(fig, stem: Path) -> list[Path]:
    """Saves a figure as ``stem.png`` (150 dpi) and ``stem.svg``; closes it."""
    plt = _pyplot()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return paths


def _tasks(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["task"].unique()) if "task" in frame else ["all"]


def _of_task(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    return frame[frame["task"] == task] if "task" in frame else frame


def bar_chart(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """Mean Pearson ± std over folds per method, one panel per task.

    Panels are stacked, so the figure keeps a readable aspect however many tasks there are.
    """
    plt = _pyplot()
    tasks = _tasks(summary)
    lk = label_keys(summary)
    most = max(len(_of_task(summary, t)) for t in tasks)
    fig, axes = plt.subplots(
        len(tasks),
        1,
        figsize=(max(4.0, 1.2 * most + 2), 3.6 * len(tasks)),
        squeeze=False,
    )
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        rows = _of_task(summary, task).sort_values("pearson_mean", ascending=False)
        labels = [method_label(r, lk) for r in rows.to_dict("records")]
        x = np.arange(len(rows))
        fused = rows["features"].map(encoder_count) > 1
        colors = ["#d62728" if f else "#1f77b4" for f in fused]
        ax.bar(x, rows["pearson_mean"], yerr=rows["pearson_std"], color=colors, capsize=4)
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_title(task)
        ax.set_ylabel("Pearson (mean ± std over folds)")
        ax.axhline(0, color="black", linewidth=0.5)
    return save(fig, stem)


def heatmap(genes: pd.DataFrame, summary: pd.DataFrame, stem: Path, max_genes: int) -> list[Path]:
    """Per-gene Pearson, genes × methods, one panel per task (most method-variable genes)."""
    plt = _pyplot()
    tasks = _tasks(genes)
    lk = label_keys(summary)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3 + 4 * len(tasks), 8), squeeze=False)
    image = None
    for ax, task in zip(axes[0], tasks, strict=True):
        g = _of_task(genes, task)
        g = g.assign(method=[method_label(r, lk) for r in g.to_dict("records")])
        mat = g.pivot_table(index="gene", columns="method", values="pearson_mean")
        order = _of_task(summary, task).sort_values("pearson_mean", ascending=False)
        cols = [method_label(r, lk) for r in order.to_dict("records")]
        mat = mat[[c for c in cols if c in mat.columns]]
        if len(mat) > max_genes:
            mat = mat.loc[mat.std(axis=1).sort_values(ascending=False).index[:max_genes]]
        mat = mat.loc[mat.mean(axis=1).sort_values(ascending=False).index]
        image = ax.imshow(mat.to_numpy(), aspect="auto", cmap="viridis", vmin=-0.2, vmax=1.0)
        ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=30, ha="right")
        ax.set_yticks(range(mat.shape[0]), mat.index, fontsize=max(3, 8 - mat.shape[0] // 20))
        ax.set_title(task)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label="Pearson (mean over folds)", shrink=0.6)
    return save(fig, stem)


def scatter_best_genes(
    summary: pd.DataFrame,
    genes: pd.DataFrame,
    predictions: Sequence[str | Path],
    stem: Path,
    n_genes: int,
) -> list[Path]:
    """Predicted vs true expression of the best genes of each task's best method.

    The best method is the task's top ``pearson_mean`` row; its predictions file is found among
    ``predictions`` by the ``predictions/{task}/{features}/{head}.parquet`` layout.

    Raises:
        HistofuseError: If the best method's predictions file is not among ``predictions``.
    """
    plt = _pyplot()
    tasks = _tasks(summary)
    by_parts = {tuple(Path(p).parts[-3:]): Path(p) for p in predictions}
    fig, axes = plt.subplots(
        len(tasks), n_genes, figsize=(2.6 * n_genes, 2.6 * len(tasks)), squeeze=False
    )
    for row_axes, task in zip(axes, tasks, strict=True):
        best = _of_task(summary, task).dropna(subset=["pearson_mean"]).iloc[0]
        head = best.get("head")
        path = by_parts.get((task, best["features"], f"{head}.parquet"))
        if path is None:
            raise HistofuseError(
                f"no predictions file for task {task!r}, features {best['features']!r}, head "
                f"{head!r}; pass results/predictions/{task}/{best['features']}/{head}.parquet"
            )
        g = _of_task(genes, task)
        g = g[g["features"] == best["features"]]
        if head is not None and "head" in g:
            g = g[g["head"] == head]
        top = g.sort_values("pearson_mean", ascending=False)["gene"].head(n_genes).tolist()
        cols = [c for gene in top for c in (f"pred:{gene}", f"true:{gene}")]
        pred = pd.read_parquet(path, columns=cols)
        for ax, gene in zip(row_axes, top, strict=False):
            t, p = pred[f"true:{gene}"].to_numpy(), pred[f"pred:{gene}"].to_numpy()
            ax.scatter(t, p, s=4, alpha=0.5, linewidths=0)
            lims = [min(t.min(), p.min()), max(t.max(), p.max())]
            ax.plot(lims, lims, color="grey", linewidth=0.6)
            r = g.loc[g["gene"] == gene, "pearson_mean"].iloc[0]
            ax.set_title(f"{task} · {gene}\n{best['features']}: r = {r:.3f}", fontsize=8)
            ax.set_xlabel("true")
            ax.set_ylabel("predicted")
        for ax in row_axes[len(top) :]:
            ax.axis("off")
    return save(fig, stem)
