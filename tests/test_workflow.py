"""The Snakemake workflow, run for real through its command line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config or REPO / "config/config.yaml"),
        "--cores",
        "2",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    table = re.search(r"Job stats:\njob\s+count\n[-\s]+\n(.*?)\ntotal", output, re.S)
    if table is None:
        return {}
    return {name: int(n) for name, n in re.findall(r"^(\S+)\s+(\d+)$", table.group(1), re.M)}


def write_config(path: Path, **changes) -> Path:
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_lint_is_clean():
    proc = snakemake(REPO, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_dry_run_plans_the_demo(tmp_path):
    proc = snakemake(tmp_path, "-n")
    counts = job_counts(proc.stdout)
    # fit: hest and linear on 3 feature sets + 7 fusion heads on the concatenation only, and
    # the HEST-Bench task's probe on 3 feature sets; its 3 samples are a second embed shard
    # bulk_fit: mean and ABMIL slide heads on the 3 feature sets
    assert counts == {
        "all": 1,
        "bulk_fit": 6,
        "demo_cohort": 1,
        "embed": 4,
        "fit": 16,
        "peka": 3,  # peka and peka-tail on tiny-vit, and the teacher
        "report": 1,
        "tile": 9,
        "tokens": 1,
    }
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tiling.patch_umm": 3}, "unknown config key(s) 'patch_umm' under `tiling`"),
        ({"encoders": ["tiny-vit", "unii"]}, "unknown encoder 'unii'"),
        ({"embed.batch_size": "large"}, "config `embed.batch_size` = 'large'"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, changes, message):
    cfg = write_config(tmp_path / "c.yaml", **changes)
    proc = snakemake(tmp_path, config=cfg, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_missing_input_file_stops_before_any_job(tmp_path):
    (tmp_path / "slide.tiff").write_bytes(b"x")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample_id\tpatient_id\tslide\texpression\nA\tP1\tslide.tiff\tA.h5ad\n")
    cfg = write_config(tmp_path / "c.yaml", **{"demo.enabled": False, "samples": str(sheet)})
    proc = snakemake(tmp_path, config=cfg, check=False)
    assert proc.returncode != 0
    assert re.search(r"row 2 \(A\): expression file \S*A.h5ad does not exist", proc.stderr)
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    return work, snakemake(work)


@pytest.mark.slow
def test_demo_end_to_end_report(demo_run):
    work = demo_run[0]
    summary = pd.read_csv(work / "results/report/summary.csv")
    for col in (
        "task",
        "features",
        "head",
        "protocol",
        "pearson_mean",
        "pearson_std",
        "n_folds",
        "n_genes",
    ):
        assert col in summary.columns
    assert sorted(set(summary["features"])) == [
        "peka-tail:tiny-vit",
        "peka:tiny-vit",
        "teacher",
        "tiny-cnn",
        "tiny-cnn+tiny-vit",
        "tiny-vit",
    ]
    summary = summary[summary["task"] != "demo-bulk"]  # the spot tasks (bulk rows: below)
    spots = summary[summary["task"] == "demo-spots"]
    pooled = spots[spots["protocol"] == "hest-pooled"].set_index(["features", "head"])
    # the teacher sees expression itself: the upper bound of every image row
    assert pooled["pearson_mean"].idxmax() == ("teacher", "hest")
    assert pooled.loc[("peka:tiny-vit", "hest"), "reference"] == "tiny-vit"
    fused = spots[spots["features"] == "tiny-cnn+tiny-vit"]
    assert {"concat", "self-attn-released", "token-attn", "gated"} <= set(fused["head"])
    assert set(spots[spots["features"] == "tiny-vit"]["head"]) == {"hest", "linear"}
    assert set(summary["protocol"]) == {"hest-pooled", "per-sample"}
    summary = summary[summary["protocol"] == "hest-pooled"]
    assert set(summary["task"]) == {"demo-spots", "demo-bench"}
    # the HEST-Bench task: its probe on every feature set, over the folder's three official splits
    bench = summary[summary["task"] == "demo-bench"]
    assert set(bench["head"]) == {"hest"} and len(bench) == 3
    for sid in ("P1-S1", "P2-S1", "P3-S1"):
        stats = json.loads((work / f"results/tiles/demo-bench.{sid}.json").read_text())
        assert stats["mpp_source"] == "pre-cut patches" and stats["n_tiles"] > 0
    assert summary["pearson_mean"].between(0.05, 1).all()  # finite and informative
    assert summary["pearson_std"].ge(0).all()
    assert (summary["n_folds"] == 3).all() and (summary["n_genes"] == 50).all()
    md = (work / "results/report/summary.md").read_text()
    assert "tiny-cnn+tiny-vit" in md


@pytest.mark.slow
def test_demo_bulk_rows_put_mean_and_abmil_side_by_side(demo_run):
    work = demo_run[0]
    summary = pd.read_csv(work / "results/report/summary.csv")
    bulk = summary[summary["task"] == "demo-bulk"]
    assert set(bulk["protocol"]) == {"case-pooled"}
    for features in ("tiny-cnn", "tiny-vit", "tiny-cnn+tiny-vit"):
        assert set(bulk[bulk["features"] == features]["head"]) == {"mean-mlp", "abmil-mlp"}
    # two leave-one-case-out repeats, each scored once over the three cases' predictions
    assert (bulk["n_folds"] == 2).all() and bulk["pearson_mean"].notna().all()
    pred = pd.read_parquet(work / "results/bulk/predictions/demo-bulk/tiny-vit/abmil-mlp.parquet")
    assert sorted(pred["case"]) == ["P1", "P1", "P2", "P2", "P3", "P3"]
    assert (pred["n_slides"] == 2).all()
    wide = pd.read_csv(work / "results/report/wide.csv", index_col="method")
    assert "demo-bulk_mean" in wide.columns


@pytest.mark.slow
def test_second_run_does_nothing_quickly(demo_run):
    work = demo_run[0]
    proc = snakemake(work)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert "Execute" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_head_change_reruns_only_heads(demo_run, tmp_path):
    work = demo_run[0]
    cfg = write_config(tmp_path / "c.yaml", **{"heads.hest": {"n_components": 32}})
    counts = job_counts(snakemake(work, "-n", config=cfg).stdout)
    assert counts == {
        "all": 1,
        "fit": 6,
        "peka": 3,
        "report": 1,
    }  # 3 feature sets × 2 tasks; PEKA rows use hest too


@pytest.mark.slow
def test_new_encoder_schedules_only_its_jobs(demo_run, tmp_path):
    work = demo_run[0]
    cfg = write_config(tmp_path / "c.yaml", encoders=["tiny-vit", "tiny-cnn", "tiny-vit-mean"])
    counts = job_counts(snakemake(work, "-n", config=cfg).stdout)
    # its two shards; hest and linear on the sheet's task, hest on the HEST-Bench task;
    # mean and ABMIL slide heads
    assert counts == {"all": 1, "embed": 2, "fit": 3, "bulk_fit": 2, "report": 1}


@pytest.mark.slow
def test_shard_registry_is_recorded(demo_run):
    registry = (demo_run[0] / "results/shards.tsv").read_text().splitlines()
    assert registry[0] == "sample_id\tshard"
    assert {line.split("\t")[1] for line in registry[1:]} == {"0000", "0001"}
    assert len(registry) == 1 + 6 + 3  # the sheet's slides, then the HEST-Bench samples


@pytest.mark.slow
def test_added_slides_schedule_only_new_shards(demo_run, tmp_path):
    work = demo_run[0]
    # a fourth patient: the demo cohort is rewritten, but its existing slides' tiles and the
    # finished shard are kept (slides are ancient inputs; shard 0000's membership is recorded)
    cfg = write_config(tmp_path / "c.yaml", **{"demo.patients": 4})
    proc = snakemake(work, "-n", config=cfg)
    counts = job_counts(proc.stdout)
    # P4-S1, P4-S2 and the HEST-Bench P4-S1: new shards 0002 (sheet) and 0003 (HEST-Bench)
    assert counts == {
        "all": 1, "demo_cohort": 1, "tile": 3, "embed": 4, "tokens": 1, "fit": 16, "peka": 3,
        "bulk_fit": 6, "report": 1,
    }  # fmt: skip
    assert "results/features/tiny-vit/0002.zarr" in proc.stdout
    assert "results/features/tiny-vit/0003.zarr" in proc.stdout


@pytest.mark.slow
def test_cache_copied_with_mtimes_is_reused(demo_run, tmp_path):
    work = demo_run[0]
    copy = tmp_path / "elsewhere"
    for folder in ("resources", "results"):  # no .snakemake metadata travels
        shutil.copytree(work / folder, copy / folder, copy_function=shutil.copy2)
    proc = snakemake(copy, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


# The demo's hest probe: the same head parameters, so only jobs reading changed stores rerun.
DEMO_HEST = yaml.safe_load((REPO / "config/config.yaml").read_text())["heads"]["hest"]


def _save_weights(path: Path, seed: int) -> None:
    import torch

    from histofuse.encoders.model import build_trunk
    from histofuse.encoders.registry import get_spec

    torch.manual_seed(seed)
    torch.save(build_trunk(get_spec("tiny-cnn")).state_dict(), path)


@pytest.mark.slow
def test_weights_and_pooling_changes_recompute_only_affected_stores(demo_run, tmp_path):
    import shutil

    from histofuse.cache import read_provenance
    from histofuse.encoders.model import sha256_file

    work = tmp_path / "work"
    shutil.copytree(demo_run[0], work, symlinks=True)
    assert "Nothing to be done" in snakemake(work, "-n").stdout
    weights = tmp_path / "tiny-cnn.pth"
    _save_weights(weights, seed=1)
    # only the HEST probe, so the reruns below stay short
    cfg = write_config(
        tmp_path / "c.yaml",
        weights={"tiny-cnn": str(weights)},
        heads={"hest": DEMO_HEST},
        bulk={},
    )
    # new weights: only tiny-cnn's stores (both shards) and the heads reading them
    assert job_counts(snakemake(work, "-n", config=cfg).stdout) == {
        "all": 1,
        "embed": 2,
        "fit": 4,
        "report": 1,
    }
    snakemake(work, config=cfg)
    store = work / "results/features/tiny-cnn/0000.zarr"
    assert read_provenance(store)["weights_sha256"] == sha256_file(weights)
    vit_before = (work / "results/features/tiny-vit/0000.manifest.json").stat().st_mtime_ns
    assert "Nothing to be done" in snakemake(work, "-n", config=cfg).stdout
    # the same file rewritten with other weights (another hash) recomputes the same store only
    time.sleep(1)
    _save_weights(weights, seed=2)
    assert job_counts(snakemake(work, "-n", config=cfg).stdout) == {
        "all": 1,
        "embed": 2,
        "fit": 4,
        "report": 1,
    }
    snakemake(work, config=cfg)
    assert read_provenance(store)["weights_sha256"] == sha256_file(weights)
    assert (work / "results/features/tiny-vit/0000.manifest.json").stat().st_mtime_ns == vit_before
    # another pooling of the same network is another store; tiny-cnn's is kept
    cfg2 = write_config(
        tmp_path / "c2.yaml",
        encoders=["tiny-vit-mean", "tiny-cnn"],
        weights={"tiny-cnn": str(weights)},
        heads={"hest": DEMO_HEST},
        bulk={},
        **{"feature_sets.concat": [["tiny-vit-mean", "tiny-cnn"]], "peka.encoders": []},
    )
    assert job_counts(snakemake(work, "-n", config=cfg2).stdout) == {
        "all": 1,
        "embed": 2,
        "fit": 4,
        "report": 1,
    }
    # other weights copied in with an older mtime (`cp -p`, `rsync -a`): seen by their content
    older = tmp_path / "older" / weights.name
    older.parent.mkdir()
    _save_weights(older, seed=3)
    then = weights.stat().st_mtime_ns - 10**10
    os.utime(older, ns=(then, then))
    shutil.copy2(older, weights)
    assert weights.stat().st_mtime_ns == then
    assert job_counts(snakemake(work, "-n", config=cfg).stdout) == {
        "all": 1,
        "embed": 2,
        "fit": 4,
        "report": 1,
    }


@pytest.mark.slow
def test_deleted_intermediates_are_rebuilt(demo_run, tmp_path):
    """A store deleted by hand (its manifest kept) or a metrics file is rebuilt, with what reads it."""
    work = tmp_path / "work"
    shutil.copytree(demo_run[0], work, symlinks=True)
    store = "results/features/tiny-vit/0000.zarr"
    metrics = next((work / "results/metrics").rglob("*.parquet")).relative_to(work)
    shutil.rmtree(work / store)
    (work / metrics).unlink()
    # Snakemake alone says "Nothing to be done": the run names them, and the fix
    proc = snakemake(work, "-n")
    assert f"1 result file of this plan deleted after the report was written ({metrics})" in (
        proc.stderr
    )
    assert f"1 feature store deleted, manifests kept ({store})" in proc.stderr
    assert "snakemake --forcerun report" in proc.stderr
    # the fix rebuilds the deleted result and the report; a job reading the store rebuilds it
    fixed = snakemake(work, "-n", "--forcerun", "report")
    assert str(metrics) in fixed.stdout and job_counts(fixed.stdout)["report"] == 1
    reader = snakemake(work, "-n", "--forcerun", "fit")
    assert f"output: {store}" in reader.stdout and job_counts(reader.stdout)["embed"] == 1


@pytest.mark.slow
def test_tiling_policy_changes_rerun_nothing(demo_run, tmp_path):
    """`on_error` decides what a failing sample does, never what a tile holds."""
    cfg = write_config(tmp_path / "c.yaml", **{"tiling.on_error": "record"})
    proc = snakemake(demo_run[0], "-n", config=cfg)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # a check that decides whether a sample is cut re-checks every sample
    samples = len((demo_run[0] / "results/shards.tsv").read_text().splitlines()) - 1
    cfg = write_config(tmp_path / "c.yaml", **{"tiling.min_spots_on_tissue": 0.5})
    assert job_counts(snakemake(demo_run[0], "-n", config=cfg).stdout)["tile"] == samples


REPORT_FILES = [
    f"{name}.{ext}"
    for name in ("summary", "wide", "gains", "per_gene")
    for ext in ("csv", "md", "tex")
] + [f"{name}.{ext}" for name in ("bars", "heatmap", "scatter") for ext in ("png", "svg")]


@pytest.mark.slow
def test_demo_report_files_and_formats_agree(demo_run):
    work = demo_run[0]
    out = work / "results/report"
    for name in [*REPORT_FILES, "index.html"]:
        assert (out / name).stat().st_size > 0, name
    assert len(list((work / "results/tiles").glob("*.qc.png"))) == 9
    summary = pd.read_csv(out / "summary.csv")
    md, tex, html = ((out / f).read_text() for f in ("summary.md", "summary.tex", "index.html"))
    for r in summary.itertuples():
        # summary.csv holds 6 decimals: a value on a rounding tie may print either way
        if not all(f"{v - 2e-6:.3f}" == f"{v + 2e-6:.3f}" for v in (r.pearson_mean, r.pearson_std)):
            continue
        cell = f"{r.pearson_mean:.3f} ± {r.pearson_std:.3f}"
        assert cell in md and cell in html and cell.replace("±", r"$\pm$") in tex
    wide = pd.read_csv(out / "wide.csv", index_col="method")
    # a method shown once for several identical ones names them joined by " = "
    methods = {
        (f, h, p): method
        for method in wide.index
        for f, heads, protocols in [method.split(" · ")]
        for h in heads.split(" = ")
        for p in protocols.split(" = ")
    }
    for r in summary.itertuples():
        assert wide.at[methods[r.features, r.head, r.protocol], f"{r.task}_mean"] == pytest.approx(
            r.pearson_mean, abs=1e-6
        )
    gains = pd.read_csv(out / "gains.csv")
    assert set(gains["features"]) == {"tiny-cnn+tiny-vit"}
    for name in ("summary", "wide", "gains", "per_gene"):
        tex = (out / f"{name}.tex").read_text()
        assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 1
        assert not re.search(r"(?<!\\)[_%]", tex), name


@pytest.mark.slow
def test_report_only_change_reruns_only_report(demo_run, tmp_path):
    work = demo_run[0]
    cfg = write_config(tmp_path / "c.yaml", **{"report.decimals": 2})
    counts = job_counts(snakemake(work, "-n", config=cfg).stdout)
    assert counts == {"all": 1, "report": 1}
    # Regenerating the report reads metrics only and takes seconds.
    (work / "results/report/summary.csv").unlink()
    t0 = time.perf_counter()
    proc = snakemake(work, config=cfg)
    assert job_counts(proc.stdout + proc.stderr) == {"all": 1, "report": 1}
    assert time.perf_counter() - t0 < 60
    assert "0.4" in (work / "results/report/summary.md").read_text()
    assert not re.search(r"\d\.\d{3} ±", (work / "results/report/summary.md").read_text())


@pytest.mark.slow
def test_snakemake_report_zip_has_every_reported_file(demo_run):
    import zipfile

    work = demo_run[0]
    snakemake(work, "--report", "report.zip")
    names = zipfile.ZipFile(work / "report.zip").namelist()
    for f in ("summary.csv", "wide.csv", "gains.csv", "per_gene.csv", "heatmap.svg", "index.html"):
        assert any(n.endswith(f) for n in names), f
    assert sum(bool(re.search(r"/P\d-S\d\.qc\.png$", n)) for n in names) == 6  # tiling QC


# --- index.html in a real headless Chromium ---

PROBE = """<script>
window.addEventListener('load', () => {
  const box = e => e.getBoundingClientRect();
  const images = [...document.images].map(i => ({
    where: (i.closest('[id]') || {}).id, natural: i.naturalWidth,
    width: box(i).width, height: box(i).height}));
  const tables = [...document.querySelectorAll('table')].map(t => ({
    id: t.id, rows: t.rows.length, width: box(t).width, height: box(t).height}));
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({images, tables});
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    """The Chromium binary, installed from Debian where missing; skips when that is impossible."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("Chromium is not installed and cannot be (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            pytest.skip(f"Chromium could not be installed: {' '.join(cmd)}: {proc.stderr[-300:]}")
    return shutil.which("chromium") or pytest.skip("apt-get installed no chromium binary")


def headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_index_html_renders_tables_and_images(demo_run, tmp_path):
    browser = chromium()
    index = demo_run[0] / "results/report/index.html"
    page = tmp_path / "probe.html"
    page.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    proc = headless(browser, "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    images = {i["where"]: i for i in probe["images"]}
    for fig in ("fig-bars", "fig-heatmap", "fig-scatter", "fig-qc"):
        assert images[fig]["natural"] > 0 and images[fig]["width"] > 100, fig
        assert images[fig]["height"] > 100, fig
    # three figures; a QC picture per sheet slide (6) and per HEST-Bench patches file (3)
    assert len(probe["images"]) == 3 + 6 + 3
    tables = {t["id"]: t for t in probe["tables"]}
    summary = pd.read_csv(demo_run[0] / "results/report/summary.csv")
    n_rows = summary["identical_to"].isna().sum()  # rows identical to another are shown once
    assert tables["table-summary"]["rows"] == 1 + n_rows
    assert tables["table-summary"]["height"] > 50
    assert tables["table-wide"]["rows"] >= 4
    # per-gene tables by task name: demo-bench (50 genes), demo-bulk (30), demo-spots (50)
    assert [tables[f"table-per-gene-{i}"]["rows"] for i in (0, 1, 2)] == [51, 31, 51]

    shot = tmp_path / "page.png"
    proc = headless(browser, f"--screenshot={shot}", "--window-size=1280,2400", index.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    # Text, rules and the heatmap's colours: the page is far from blank.
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.02
