"""Report tables, statistics and rendering on metrics files written to disk."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histofuse.cli import main
from histofuse.errors import HistofuseError
from histofuse.report.build import build_report, parse_options
from histofuse.report.render import fmt, fmt_ci, fmt_pm, latex_escape
from histofuse.report.tables import relative_change

GENES = [f"gene_{i}" for i in range(30)]


def write_metrics(
    root: Path,
    task: str,
    features: str,
    head: str,
    base: float,
    seed: int = 0,
    *,
    protocol: str = "hest",
    samples: int = 0,
):
    """A metrics file in fit's format: per (fold, gene) Pearson around `base` per gene.

    With `samples`, one value per test sample of each fold (the per-sample protocol), each
    sample named after its fold; the values depend on `seed` only, so two files written with the
    same seed carry the same result.
    """
    rng = np.random.default_rng(seed)
    gene_level = np.linspace(-0.1, 0.3, len(GENES))
    rows = []
    for fold in range(3):
        for sample in [f"S{fold}_{i}" for i in range(samples)] or [""]:
            for g, gene in enumerate(GENES):
                r = float(np.clip(base + gene_level[g] + rng.normal(0, 0.02), -1, 1))
                rows.append(
                    {
                        "task": task,
                        "features": features,
                        "head": head,
                        "protocol": protocol,
                        "fold": fold,
                        "seed": 1,
                        "sample": sample,
                        "gene": gene,
                        "pearson": r,
                        "spearman": r,
                        "mse": 1 - r,
                        "constant": False,
                        "n": 100,
                    }
                )
    name = head if protocol == "hest" else f"{head}.{protocol}"
    path = root / "metrics" / task / features / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture()
def metrics_files(tmp_path) -> list[Path]:
    files = []
    for task, shift in (("task_a", 0.0), ("task_b", 0.1)):
        files.append(write_metrics(tmp_path, task, "enc_a", "hest", 0.30 + shift, seed=1))
        files.append(write_metrics(tmp_path, task, "enc_b", "hest", 0.20 + shift, seed=2))
        files.append(write_metrics(tmp_path, task, "enc_a+enc_b", "hest", 0.40 + shift, seed=3))
    return files


def test_fusion_heads_gain_over_the_linear_head_on_single_encoders(tmp_path):
    """Like with like: a fusion head is compared with `linear` on its singles, not with `hest`."""
    files = [
        write_metrics(tmp_path, "t", "enc_a", "hest", 0.10, seed=1),
        write_metrics(tmp_path, "t", "enc_b", "hest", 0.12, seed=2),
        write_metrics(tmp_path, "t", "enc_a", "linear", 0.30, seed=3),
        write_metrics(tmp_path, "t", "enc_b", "linear", 0.20, seed=4),
        write_metrics(tmp_path, "t", "enc_a+enc_b", "hest", 0.15, seed=5),
        write_metrics(tmp_path, "t", "enc_a+enc_b", "concat", 0.27, seed=6),
    ]
    summary = build_report(files, tmp_path / "report").set_index(["features", "head"])
    gains = pd.read_csv(tmp_path / "report" / "gains.csv").set_index("head")
    single = {
        h: [summary.at[(e, h), "pearson_mean"] for e in ("enc_a", "enc_b")]
        for h in ("linear", "hest")
    }
    for head, base in (("concat", "linear"), ("hest", "hest")):
        fused = summary.at[("enc_a+enc_b", head), "pearson_mean"]
        assert gains.at[head, "single_head"] == base
        assert gains.at[head, "mean_single"] == pytest.approx(np.mean(single[base]), rel=1e-5)
        assert gains.at[head, "best_single_pearson"] == pytest.approx(max(single[base]), rel=1e-5)
        assert gains.at[head, "gain_vs_mean_single_pct"] == pytest.approx(
            100 * (fused - np.mean(single[base])) / np.mean(single[base]), rel=1e-5
        )
    # concat beats the mean of its linear singles (0.25) but not the best (0.30)
    assert gains.at["concat", "gain_vs_mean_single_pct"] > 0
    assert gains.at["concat", "gain_vs_best_single_pct"] < 0
    assert "enc_a (linear)" in (tmp_path / "report" / "gains.md").read_text()


def test_statistics_and_gains(metrics_files, tmp_path):
    out = tmp_path / "report"
    summary = build_report(metrics_files, out)
    a = summary[summary["task"] == "task_a"].set_index("features")
    # The best single encoder is the reference of its family; the fused row beats it clearly.
    assert (a["reference"] == "enc_a").all()
    assert np.isnan(a.at["enc_a", "p_wilcoxon"])
    assert a.at["enc_a+enc_b", "p_wilcoxon"] < 1e-6  # 90 paired values, all positive
    assert a.at["enc_a+enc_b", "delta_vs_best_single"] == pytest.approx(0.10, abs=0.02)
    assert a.at["enc_b", "delta_vs_best_single"] == pytest.approx(-0.10, abs=0.02)
    assert (a["ci_low"] < a["pearson_mean"]).all() and (a["pearson_mean"] < a["ci_high"]).all()

    gains = pd.read_csv(out / "gains.csv").set_index("task")
    fused, ma, mb = (a.at[f, "pearson_mean"] for f in ("enc_a+enc_b", "enc_a", "enc_b"))
    assert gains.at["task_a", "gain_vs_mean_single_pct"] == pytest.approx(
        100 * (fused - (ma + mb) / 2) / ((ma + mb) / 2), rel=1e-5
    )
    assert gains.at["task_a", "gain_vs_best_single_pct"] == pytest.approx(
        100 * (fused - ma) / ma, rel=1e-5
    )

    wide = pd.read_csv(out / "wide.csv", index_col="method")
    assert list(wide.index) == ["enc_a+enc_b · hest", "enc_a · hest", "enc_b · hest"]
    assert wide.loc["enc_b · hest", "average_mean"] == pytest.approx(
        (
            a.at["enc_b", "pearson_mean"]
            + summary.query("task == 'task_b' and features == 'enc_b'")["pearson_mean"].iloc[0]
        )
        / 2
    )
    per_gene = pd.read_csv(out / "per_gene.csv")
    assert len(per_gene) == 2 * 3 * len(GENES) and (per_gene["n_folds"] == 3).all()


def test_learned_feature_sets_are_neither_fused_nor_references(metrics_files, tmp_path):
    """`image+peka:<enc>` holds a `+` but is one learned set: no gain row, never a reference."""
    files = [
        *metrics_files,
        write_metrics(tmp_path, "task_a", "image+peka:enc_a", "hest", 0.50, seed=4),
        write_metrics(tmp_path, "task_a", "teacher", "hest", 0.60, seed=5),
    ]
    summary = build_report(files, tmp_path / "report").set_index(["task", "features"])
    gains = pd.read_csv(tmp_path / "report" / "gains.csv")
    assert set(gains["features"]) == {"enc_a+enc_b"}
    for learned in ("image+peka:enc_a", "teacher"):
        assert summary.at[("task_a", learned), "n_encoders"] == 1
        assert np.isnan(summary.at[("task_a", learned), "single_mean"])
        assert summary.at[("task_a", learned), "reference"] == "enc_a"
    assert summary.at[("task_a", "enc_a+enc_b"), "n_encoders"] == 2


def test_best_bold_second_underlined_in_every_format(metrics_files, tmp_path):
    out = tmp_path / "report"
    build_report(metrics_files, out)
    md = (out / "wide.md").read_text()
    tex = (out / "wide.tex").read_text()
    html = (out / "index.html").read_text()
    fused_row = next(line for line in md.splitlines() if line.startswith("| enc_a+enc_b"))
    second_row = next(line for line in md.splitlines() if line.startswith("| enc_a · hest"))
    assert fused_row.count("**") == 8  # task_a, task_b, Average, Mean rank
    assert second_row.count("<u>") == 4
    assert r"\textbf{" in tex and r"\underline{" in tex
    assert "<b>" in html and "<u>" in html


def test_latex_is_well_formed_and_escaped(metrics_files, tmp_path):
    out = tmp_path / "report"
    build_report(metrics_files, out)
    for name in ("summary", "wide", "gains", "per_gene"):
        tex = (out / f"{name}.tex").read_text()
        for env in ("table", "tabular"):
            assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") > 0
        # No unescaped underscore or percent sign outside commands.
        assert not re.search(r"(?<!\\)[_%]", tex), name
        assert r"enc\_a" in tex or r"gene\_" in tex
        for line in tex.splitlines():
            if line.endswith(r"\\"):
                n_cols = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1))
                assert line.count(" & ") == n_cols - 1, line
    assert r"(\%)" in (out / "gains.tex").read_text()
    assert latex_escape("a_b 5% & $x ± y") == r"a\_b 5\% \& \$x $\pm$ y"


def test_numbers_agree_across_formats(metrics_files, tmp_path):
    out = tmp_path / "report"
    build_report(metrics_files, out, options=parse_options('{"decimals": 4}'))
    summary = pd.read_csv(out / "summary.csv")
    md, tex, html = ((out / f).read_text() for f in ("summary.md", "summary.tex", "index.html"))
    for r in summary.itertuples():
        cell = f"{r.pearson_mean:.4f} ± {r.pearson_std:.4f}"
        assert cell in md and cell in html
        assert cell.replace("±", r"$\pm$") in tex
        ci = f"[{r.ci_low:.4f}, {r.ci_high:.4f}]"
        assert ci in md and ci in tex and ci in html
        if r.p_wilcoxon == r.p_wilcoxon:  # not NaN: the reference row has no test
            p = f"{r.p_wilcoxon:.3g}"
            assert f"| {p} |" in md and f"& {p} &" in tex and f">{p}<" in html


def test_bad_input_is_one_clear_error(tmp_path, metrics_files, capsys):
    with pytest.raises(HistofuseError, match=r"unknown config key\(s\) 'decimal' under `report`"):
        parse_options('{"decimal": 2}')
    with pytest.raises(HistofuseError, match="report.confidence"):
        parse_options('{"confidence": 1.5}')
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"features": ["x"], "gene": ["g"]}).to_parquet(bad)
    with pytest.raises(HistofuseError, match=r"bad.parquet lacks column\(s\) \['pearson'\]"):
        build_report([bad], tmp_path / "r")
    missing = tmp_path / "none.parquet"
    assert main(["report", "--metrics", str(missing), "--out", str(tmp_path / "r")]) == 2
    assert f"metrics file {missing} does not exist" in capsys.readouterr().err


def test_cli_report_writes_every_file(metrics_files, tmp_path):
    out = tmp_path / "report"
    rc = main(["report", "--metrics", *map(str, metrics_files), "--out", str(out)])
    assert rc == 0
    for name in ("summary", "wide", "gains", "per_gene"):
        for ext in ("csv", "md", "tex"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    for name in ("bars", "heatmap"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert not re.search(r"""src=["'](?!data:)""", html)  # self-contained


FAST = '{"bootstrap": 0}'


def cells(line: str) -> list[str]:
    """The cells of a Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_average_and_rank_only_against_methods_with_the_same_tasks(metrics_files, tmp_path):
    """A method present in one task does not outrank methods averaged over two."""
    files = [*metrics_files, write_metrics(tmp_path, "task_a", "teacher", "hest", 0.9, seed=7)]
    out = tmp_path / "report"
    build_report(files, out, options=parse_options(FAST))
    wide = pd.read_csv(out / "wide.csv", index_col="method")
    assert list(wide.index) == [
        "enc_a+enc_b · hest",
        "enc_a · hest",
        "enc_b · hest",
        "teacher · hest",
    ]
    assert wide["n_tasks"].tolist() == [2, 2, 2, 1]
    assert wide["tasks"].tolist() == ["task_a, task_b"] * 3 + ["task_a"]
    # Ranked only among the three methods with both tasks: 1, 2, 3 in each task.
    assert wide["mean_rank"].tolist() == [1.0, 2.0, 3.0, 1.0]
    md = (out / "wide.md").read_text()
    fused = next(line for line in md.splitlines() if line.startswith("| enc_a+enc_b"))
    teacher = next(line for line in md.splitlines() if line.startswith("| teacher"))
    assert cells(fused)[3:6] == ["**0.549**", "2", "**1.00**"]
    assert cells(teacher)[1].startswith("**0.9") and cells(teacher)[2] == "–"  # best in task_a
    assert cells(teacher)[4:6] == ["1", "**1.00**"]  # best of its own task set only


def test_relative_gain_needs_a_reference_away_from_zero(tmp_path):
    """Near-zero references: absolute Δ with a paired test; the percentage is withheld."""
    files = [
        write_metrics(tmp_path, "t", "enc_a", "hest", -0.05, seed=1),  # mean Pearson ≈ 0.05
        write_metrics(tmp_path, "t", "enc_b", "hest", -0.08, seed=2),  # ≈ 0.02
        write_metrics(tmp_path, "t", "enc_a+enc_b", "hest", 0.10, seed=3),  # ≈ 0.20
    ]
    out = tmp_path / "report"
    summary = build_report(files, out, options=parse_options(FAST)).set_index("features")
    gains = pd.read_csv(out / "gains.csv").iloc[0]
    fused, a, b = (summary.at[f, "pearson_mean"] for f in ("enc_a+enc_b", "enc_a", "enc_b"))
    assert np.isnan(gains["gain_vs_mean_single_pct"]) and np.isnan(gains["gain_vs_best_single_pct"])
    assert gains["gain_suppressed"] == "mean, best"
    assert np.isnan(summary.at["enc_a+enc_b", "gain_vs_singles"])
    assert gains["delta_vs_mean_single"] == pytest.approx(fused - (a + b) / 2, abs=1e-6)
    assert gains["delta_vs_best_single"] == pytest.approx(fused - a, abs=1e-6)
    assert gains["p_vs_mean_single"] < 1e-6 and gains["p_vs_best_single"] < 1e-6  # 90 pairs, all up
    md = (out / "gains.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| t |"))
    assert row.count("–†") == 2 and f"| {fused - a:.3f} |" in row
    assert "report.min_reference = 0.2" in md
    assert r"$^\dagger$" in (out / "gains.tex").read_text()
    assert "report.min_reference = 0.2" in (out / "index.html").read_text()
    # The threshold is an option; the percentage divides by |reference|.
    build_report(files, out, options=parse_options('{"bootstrap": 0, "min_reference": 0}'))
    shown = pd.read_csv(out / "gains.csv").iloc[0]
    assert shown["gain_vs_best_single_pct"] == pytest.approx(100 * (fused - a) / a, rel=1e-5)
    assert "†" not in (out / "gains.md").read_text()
    assert relative_change(-0.1, -0.3, 0.2) == pytest.approx(200 / 3)  # better, so positive


def test_per_sample_values_are_paired_sample_by_sample(tmp_path):
    """Two test samples per fold give 2 × 3 × 30 pairs, not every sample crossed with every other."""
    files = [
        write_metrics(tmp_path, "t", "enc_a", "hest", 0.30, 1, protocol="per-sample", samples=2),
        write_metrics(tmp_path, "t", "enc_b", "hest", 0.20, 2, protocol="per-sample", samples=2),
    ]
    summary = build_report(files, tmp_path / "r", options=parse_options(FAST))
    assert summary.set_index("features").at["enc_b", "n_pairs"] == 2 * 3 * len(GENES)


def test_rows_identical_by_construction_are_shown_once_with_a_note(tmp_path):
    """One sample per fold: per-sample equals pooled; concat equals linear on the same features."""

    def both(features, head, base, seed, samples=1):
        return [
            write_metrics(tmp_path, "t", features, head, base, seed, protocol="hest-pooled"),
            write_metrics(
                tmp_path, "t", features, head, base, seed, protocol="per-sample", samples=samples
            ),
        ]

    files = [
        *both("enc_a", "linear", 0.30, 1),
        *both("enc_b", "linear", 0.20, 2),
        *both("enc_a+enc_b", "linear", 0.40, 3),
        *both("enc_a+enc_b", "concat", 0.40, 3),
        *both("enc_a+enc_b", "gated", 0.35, 4, samples=2),  # two samples: not the same result
    ]
    out = tmp_path / "report"
    summary = build_report(files, out, options=parse_options(FAST))
    assert len(summary) == 10  # the CSV keeps every row and says where each went
    merged = summary.set_index(["features", "head", "protocol"])["identical_to"]
    assert merged[("enc_a", "linear", "per-sample")] == "enc_a · linear · hest-pooled"
    assert merged[("enc_a+enc_b", "linear", "per-sample")] == "enc_a+enc_b · concat · hest-pooled"
    assert merged[("enc_a", "linear", "hest-pooled")] == ""
    assert (merged.xs("gated", level="head") == "").all()

    md = (out / "summary.md").read_text()
    rows = [line for line in md.split("## Rows shown once")[0].splitlines() if "| t |" in line]
    assert len(rows) == 5  # enc_a, enc_b, the fused linear/concat, gated twice
    assert sum("| concat = linear | hest-pooled = per-sample |" in r for r in rows) == 1
    notes = md.split("## Rows shown once")[1]
    assert "every test fold has one sample" in notes
    assert "concat is the linear head on the same features" in notes
    assert "enc_a+enc_b · linear · per-sample" in notes  # what was merged is named
    for name in ("summary.tex", "index.html"):
        assert "Rows shown once" in (out / name).read_text()
    gains = (out / "gains.md").read_text()
    assert gains.count("| enc_a+enc_b |") == 3  # concat = linear once, gated per protocol
    wide = pd.read_csv(out / "wide.csv", index_col="method")
    assert "enc_a+enc_b · concat = linear · hest-pooled = per-sample" in wide.index
    assert len(wide) == 5


def test_no_negative_zero_and_one_dash_for_an_empty_cell(metrics_files, tmp_path):
    assert fmt(-0.0004, 3) == "0.000" and fmt(-0.0006, 3) == "-0.001" and fmt(-0.0, 2) == "0.00"
    assert fmt_pm(np.nan, np.nan, 3) == "–" and fmt_pm(0.5, np.nan, 3) == "0.500"
    assert fmt_ci(np.nan, np.nan, 3) == "–"
    # enc_c is enc_a less 1e-4 everywhere, in task_a only: Δ vs best single rounds to -0.000.
    a = pd.read_parquet(metrics_files[0])
    c = a.assign(features="enc_c", pearson=a["pearson"] - 1e-4)
    path = tmp_path / "metrics" / "task_a" / "enc_c" / "hest.parquet"
    path.parent.mkdir(parents=True)
    c.to_parquet(path)
    out = tmp_path / "report"
    build_report([*metrics_files, path], out, options=parse_options(FAST))
    for name in ("summary", "wide", "gains"):
        for ext in ("md", "tex"):
            text = (out / f"{name}.{ext}").read_text()
            assert not re.search(r"-0\.0+(?!\d*[1-9])\b", text), (name, ext)
            assert "– ± –" not in text and "[–, –]" not in text and r"-- $\pm$ --" not in text
    enc_c = next(line for line in (out / "wide.md").read_text().splitlines() if "enc_c" in line)
    assert cells(enc_c)[2] == "–"
    summary = (out / "summary.md").read_text()
    assert cells(next(x for x in summary.splitlines() if "| enc_c |" in x))[6] == "0.000"
    html = (out / "index.html").read_text()
    assert "– ± –" not in html and ">-0.000<" not in html


# --- Figures: read at page width ---------------------------------------------------------------

PAGE_IN, PAGE_PX, MIN_PT = 7.0, 1400, 8.0
LONG = ["uni", "conch_v1_5", "virchow2", "uni+conch_v1_5", "uni+conch_v1_5+virchow2", "peka:uni"]


def write_predictions(root: Path, task: str, features: str, head: str, offset: float) -> Path:
    """A predictions file in fit's layout: truth per gene, prediction = truth + noise + offset."""
    rng = np.random.default_rng(0)
    n = 60
    table = {
        "seed": 1,
        "fold": np.arange(n) % 3,
        "sample": "S",
        "barcode": np.arange(n).astype(str),
    }
    for gene in GENES:
        truth = rng.gamma(2.0, 1.0, n)
        table[f"true:{gene}"] = truth
        table[f"pred:{gene}"] = truth + rng.normal(0, 0.5, n) + offset
    path = root / "predictions" / task / features / f"{head}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_parquet(path)
    return path


def many_methods(root: Path, best_head: str = "hest") -> tuple[list[Path], list[Path]]:
    """Two tasks × six feature sets × two heads × two protocols; one method near r = -0.97.

    The best method of every task and protocol is `uni+conch_v1_5+virchow2` with `best_head`.
    """
    files, preds = [], []
    for task in ("task_a", "task_b"):
        for i, features in enumerate(LONG):
            for head in ("hest", "cross-attn-released"):
                base = 0.1 + 0.05 * i + (0.1 if head == best_head else 0)
                base = -0.87 if (features, head) == ("virchow2", "hest") else base
                for protocol, samples in (("hest-pooled", 0), ("per-sample", 2)):
                    files.append(
                        write_metrics(
                            root, task, features, head, base, seed=i,
                            protocol=protocol, samples=samples,
                        )
                    )  # fmt: skip
                preds.append(write_predictions(root, task, features, head, -2.5))
    return files, preds


@pytest.fixture()
def drawn(tmp_path, monkeypatch):
    """Builds a report and keeps every figure it saves, by file stem, for inspection."""
    from matplotlib.figure import Figure

    figures = {}
    savefig = Figure.savefig

    def keep(self, fname, *args, **kwargs):
        figures[Path(fname).stem] = self
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)

    def build(best_head: str = "hest"):
        files, preds = many_methods(tmp_path, best_head)
        out = tmp_path / "report"
        build_report(files, out, predictions=preds, options=parse_options(FAST))
        return out, figures

    return build


def drawn_texts(fig) -> list:
    """(text artist, its box in pixels) of every visible, non-empty text the figure draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)  # the saved figure was closed, which took its canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    out, tick_labels = [], set()
    for ax in fig.get_axes():  # only the ticks drawn (those within the view limits)
        for axis in (ax.xaxis, ax.yaxis):
            out += [t.label1 for t in axis._update_ticks() if t.label1.get_visible()]
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels |= {id(tick.label1), id(tick.label2)}
    out += [t for t in fig.findobj(Text) if id(t) not in tick_labels]
    return [
        (t, t.get_window_extent(renderer))
        for t in dict.fromkeys(out)
        if t.get_visible() and t.get_text().strip()
    ]


def overlapping(boxes) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap by more than one pixel each way."""
    pairs = []
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1 :]:
            dx = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            dy = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if dx > 1 and dy > 1:
                pairs.append((a.get_text(), b.get_text()))
    return pairs


def test_figures_read_at_page_width(drawn):
    """Every text inside the canvas, none overprinting another, at 8 pt or more on a 7 in page."""
    from PIL import Image

    out, figures = drawn()
    assert set(figures) == {"bars", "heatmap", "scatter"}
    for name, fig in figures.items():
        assert fig.get_figwidth() <= PAGE_IN, name
        with Image.open(out / f"{name}.png") as png:
            assert png.width <= PAGE_PX, (name, png.size)
        assert (out / f"{name}.svg").stat().st_size > 1000
        canvas = fig.bbox
        boxes = drawn_texts(fig)
        assert len(boxes) > 20, name
        for text, box in boxes:
            assert text.get_fontsize() >= MIN_PT, (name, text.get_text())
            inside = (
                box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1
                and box.y0 >= canvas.y0 - 1 and box.y1 <= canvas.y1 + 1
            )  # fmt: skip
            assert inside, (name, text.get_text(), box, canvas)
        assert overlapping(boxes) == [], name
    # Every method is named in the bar chart, and the legend explains the colours.
    labels = {t.get_text() for ax in figures["bars"].axes for t in ax.get_yticklabels()}
    assert "uni+conch_v1_5+virchow2 · cross-attn-released · per-sample" in labels
    legend = figures["bars"].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "one encoder", "fused: concatenated encoders", "learned feature set (PEKA)",
    ]  # fmt: skip


def test_heatmap_colour_bar_covers_the_data(drawn):
    """A gene at r ≈ -0.97 gets its own colour, not the colour of -0.2."""
    _, figures = drawn()
    images = [im for ax in figures["heatmap"].axes for im in ax.get_images()]
    assert len(images) == 2  # one panel per task
    values = np.concatenate([np.ravel(im.get_array().compressed()) for im in images])
    assert values.min() < -0.9
    for im in images:
        assert im.norm.vmin <= values.min() and im.norm.vmax >= values.max()


def test_scatter_one_row_per_protocol_and_identity_only_for_calibrated_heads(drawn):
    """Each (task, protocol) row names its protocol; hest (no intercept) gets no y = x line."""
    _, figures = drawn("hest")
    fig = figures["scatter"]
    titles = [sub._suptitle.get_text() for sub in fig.subfigs]
    assert len(titles) == 4
    for task in ("task_a", "task_b"):
        for protocol in ("hest-pooled", "per-sample"):
            assert sum(f"{task} · {protocol} protocol" in t for t in titles) == 1
    assert all("fits no intercept" in t for t in titles)
    assert all(not ax.lines for ax in fig.axes)  # no identity line under an offset probe
    _, figures = drawn("cross-attn-released")
    fig = figures["scatter"]
    assert all("y = x" in sub._suptitle.get_text() for sub in fig.subfigs)
    drawn_axes = [ax for ax in fig.axes if ax.collections]
    assert drawn_axes and all(len(ax.lines) == 1 for ax in drawn_axes)


# --- Data and design ---------------------------------------------------------------------------


def with_run_metadata(path: Path, scheme: str, missing: dict, dropped: list) -> Path:
    """Rewrites a metrics file with the metadata the fit stage records (via its writer)."""
    from histofuse.atomic import write_parquet

    table = pd.read_parquet(path)
    per_sample = table["sample"] != ""
    # A fold's 100 test spots split between its samples, as fit scores them.
    table.loc[per_sample, "n"] = (
        100 // table.loc[per_sample].groupby("fold")["sample"].nunique().max()
    )
    folds = {f"1/{f}": GENES for f in table["fold"].unique()}
    split = {"scheme": scheme, "n_folds": 3, "n_repeats": 10, "dir": None}
    meta = {
        "task": {"split": split, "seed": 1, "genes": {"top_k": len(GENES)}},
        "dropped_spots": dropped,
        "missing_samples": missing,
        "encoders": [table["features"].iloc[0]],
        "genes": folds,
        "warnings": [f"split {scheme}: a warning the fit recorded"],
    }
    write_parquet(table, path, meta)
    return path


def feature_store(root: Path, encoder: str, shard: str, samples: dict, sha: str) -> Path:
    """A feature store's root (its provenance) and manifest, written by the cache's writer."""
    import zarr

    from histofuse.cache.manifest import manifest_path, write_manifest

    store = root / "features" / encoder / f"{shard}.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.attrs["histofuse"] = {
        "encoder": {"name": encoder},
        "weights_sha256": sha,
        "weights_source": "hub",
        "dtype": "float16",
        "versions": {"histofuse": "9.9.9"},
    }
    write_manifest(store, f"key-{encoder}", samples)
    return manifest_path(store)


def test_data_and_design_section_counts_what_the_run_wrote(tmp_path):
    from histofuse.slides.tiling import write_stats

    dropped = [{"sample": "S0_0", "barcode": f"b{i}", "reason": "nan features"} for i in range(4)]
    files = [
        with_run_metadata(
            write_metrics(tmp_path, "t", f, "hest", b, s, protocol=p, samples=n),
            "patient-kfold", {"S9_0": "unreadable slide"}, dropped,
        )
        for f, b, s in (("enc_a", 0.3, 1), ("enc_b", 0.2, 2))
        for p, n in (("hest-pooled", 0), ("per-sample", 2))
    ]  # fmt: skip
    samples = [f"S{fold}_{i}" for fold in range(3) for i in range(2)]  # write_metrics' names
    sheet = tmp_path / "samples.tsv"
    patients = [f"P{k // 3}" for k in range(len(samples))]  # two patients
    pd.DataFrame({"sample_id": samples, "patient_id": patients}).to_csv(sheet, sep="\t")
    design = [sheet]
    for enc, sha in (("enc_a", "a" * 64), ("enc_b", "b" * 64)):
        design.append(feature_store(tmp_path, enc, "0000", {s: 10 for s in samples[:4]}, sha))
        design.append(feature_store(tmp_path, enc, "0001", {s: 7 for s in samples[4:]}, sha))
    for k, s in enumerate(samples):
        stats = tmp_path / "tiles" / f"{s}.json"
        stats.parent.mkdir(exist_ok=True)
        source = "openslide.mpp" if k < 4 else "override"
        warnings = ["slide has no pyramid"] if k == 0 else []
        write_stats({"sample": s, "mpp_x": 0.25, "mpp_source": source, "effective_mpp": 0.5,
                     "n_tiles": 10 + k, "warnings": warnings}, stats)  # fmt: skip
        design.append(stats)
    failed = tmp_path / "tiles" / "S9_0.json"  # a recorded tiling failure: no µm/px at all
    write_stats({"sample": "S9_0", "mpp_x": None, "effective_mpp": None, "n_tiles": 0,
                 "error": "unreadable slide"}, failed)  # fmt: skip
    design.append(failed)
    out = tmp_path / "report"
    build_report(files, out, options=parse_options(FAST), design_files=design)

    rows = pd.read_csv(out / "design.csv", dtype=str, keep_default_na=False)
    fact = rows.set_index(["table", "key", "column"])["value"]
    assert fact[("tasks", "t", "samples")] == "6"
    assert fact[("tasks", "t", "patients")] == "2"
    assert fact[("tasks", "t", "spots")] == "300"  # 100 test spots in each of 3 folds
    assert fact[("tasks", "t", "genes per fold")] == str(len(GENES))
    assert fact[("tasks", "t", "split")] == "patient-kfold"
    assert fact[("tasks", "t", "folds")] == "3"
    assert fact[("tasks", "t", "repeats")] == "–"  # n_repeats is for repeated-kfold only
    assert fact[("tasks", "t", "seeds")] == "1"
    assert fact[("tasks", "t", "samples left out")] == "1"
    assert fact[("tasks", "t", "spots dropped")] == "4"
    for enc, sha in (("enc_a", "a" * 64), ("enc_b", "b" * 64)):
        assert fact[("encoders", enc, "shards")] == "2"
        assert fact[("encoders", enc, "tiles")] == str(4 * 10 + 2 * 7)
        assert fact[("encoders", enc, "weights sha256")] == sha
        assert fact[("encoders", enc, "cache keys")] == f"key-{enc}"
        assert fact[("encoders", enc, "histofuse")] == "9.9.9"
    assert fact[("tiling", "0.25 · openslide.mpp · 0.5", "samples")] == "4"
    assert fact[("tiling", "0.25 · openslide.mpp · 0.5", "tiles")] == str(10 + 11 + 12 + 13)
    assert fact[("tiling", "0.25 · override · 0.5", "samples")] == "2"
    assert fact[("tiling", "0.25 · override · 0.5", "tiles")] == str(14 + 15)
    assert fact[("tiling", "– · – · –", "samples")] == "1"
    # every recorded warning is in the report, once per place
    assert fact[("warnings", "sample S0_0", "warning")] == "slide has no pyramid"
    assert (
        fact[("warnings", "task t", "warning")] == "split patient-kfold: a warning the fit recorded"
    )
    assert not any(key.startswith("sample S1") for key in rows["key"])
    assert fact.index.is_unique
    from histofuse import __version__

    assert fact[("report", "histofuse", "version")] == __version__
    html = (out / "index.html").read_text()
    assert "Data and design" in html and "a" * 64 in html and "patient-kfold" in html
    assert "openslide.mpp" in (out / "design.md").read_text()
