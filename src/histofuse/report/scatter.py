"""Predicted against measured expression: one row of panels per task and protocol.

Each row shows the best genes of the best method under that protocol (its top ``pearson_mean``
row), with that protocol's Pearson in each panel's title. The line y = x is drawn only for heads
fitted with an intercept: the ``hest`` probes (HEST-Benchmark's PCA + ridge) fit none, so their
predictions sit a constant below or above the truth, which Pearson does not see; the row's title
says so instead of drawing a line that would read as a calibration failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from histofuse.errors import HistofuseError
from histofuse.report.plots import WIDTH_IN, _pyplot, save


def intercept_free(head: str) -> bool:
    """Whether a head fits no intercept (its predictions are not calibrated in level)."""
    from histofuse.heads.probes import HESTAlphaCVProbe, HESTProbe

    return head in (HESTProbe.head_name, HESTAlphaCVProbe.head_name)


def _rows(summary: pd.DataFrame) -> list[pd.Series]:
    """The best row of each (task, protocol) with a Pearson."""
    ranked = summary.dropna(subset=["pearson_mean"]).sort_values("pearson_mean", ascending=False)
    best = ranked.groupby(["task", "protocol"], sort=True).head(1)
    return [r for _, r in best.sort_values(["task", "protocol"]).iterrows()]


def _predictions_file(best: pd.Series, by_parts: dict[tuple, Path]) -> Path:
    task, features, head = best["task"], best["features"], best["head"]
    path = by_parts.get((task, features, f"{head}.parquet"))
    if path is None:
        raise HistofuseError(
            f"no predictions file for task {task!r}, features {features!r}, head {head!r}; "
            f"pass results/predictions/{task}/{features}/{head}.parquet"
        )
    return path


def _row_title(best: pd.Series) -> str:
    head = best["head"]
    first = f"{best['task']} · {best['protocol']} protocol · best: {best['features']} · {head}"
    if intercept_free(head):
        note = f"{head} fits no intercept: an offset from y = x is expected; r ignores it"
    else:
        note = "grey line: y = x"
    return f"{first}\n{note}"


def _draw_row(sub, best: pd.Series, genes: pd.DataFrame, path: Path, n_genes: int) -> None:
    """One task and protocol: its best method's top genes, predicted against true."""
    keys = ["task", "features", "head", "protocol"]
    g = genes[(genes[keys] == best[keys]).all(axis=1)]
    top = g.sort_values("pearson_mean", ascending=False).head(n_genes)
    cols = [c for gene in top["gene"] for c in (f"pred:{gene}", f"true:{gene}")]
    pred = pd.read_parquet(path, columns=cols)
    axes = sub.subplots(1, n_genes, squeeze=False)[0]
    line = not intercept_free(best["head"])
    for i, (ax, rec) in enumerate(zip(axes, top.to_dict("records"), strict=False)):
        t, p = pred[f"true:{rec['gene']}"].to_numpy(), pred[f"pred:{rec['gene']}"].to_numpy()
        ax.scatter(t, p, s=3, alpha=0.5, linewidths=0)
        if line:
            lims = [min(t.min(), p.min()), max(t.max(), p.max())]
            ax.plot(lims, lims, color="grey", linewidth=0.6)
        ax.set_title(f"{rec['gene']}, r = {rec['pearson_mean']:.3f}")
        ax.set_xlabel("true")
        if i == 0:
            ax.set_ylabel("predicted")
    for ax in axes[len(top) :]:
        ax.axis("off")
    sub.suptitle(_row_title(best))


def scatter_figure(
    summary: pd.DataFrame, genes: pd.DataFrame, predictions: Sequence[str | Path], n_genes: int
):
    """Predicted vs true expression: a row per (task, protocol), ``n_genes`` panels each.

    The best method of a row is found among ``predictions`` by the
    ``predictions/{task}/{features}/{head}.parquet`` layout.

    Raises:
        HistofuseError: If a best method's predictions file is not among ``predictions``.
    """
    plt = _pyplot()
    by_parts = {tuple(Path(p).parts[-3:]): Path(p) for p in predictions}
    rows = _rows(summary)
    files = [_predictions_file(best, by_parts) for best in rows]
    fig = plt.figure(figsize=(WIDTH_IN, 2.4 * len(rows)), layout="constrained")
    subs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for sub, best, path in zip(subs, rows, files, strict=True):
        _draw_row(sub, best, genes, path, n_genes)
    return fig


def scatter_best_genes(
    summary: pd.DataFrame,
    genes: pd.DataFrame,
    predictions: Sequence[str | Path],
    stem: Path,
    n_genes: int,
) -> list[Path]:
    """Saves :func:`scatter_figure` as ``stem.png`` and ``stem.svg``."""
    return save(scatter_figure(summary, genes, predictions, n_genes), stem)
