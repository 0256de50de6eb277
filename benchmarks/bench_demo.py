"""End-to-end demo: the Snakemake pipeline vs the same stages called in one Python process.

Both start from the same generated cohort (generation is timed separately). The reference runs
tile → embed → fit → report as plain function calls, one after another, in this process; the
pipeline runs them as Snakemake jobs (one CLI process each, 2 cores). ``ratio`` = reference
seconds ÷ pipeline seconds: the pipeline's throughput relative to a hand-written script, so values
below 1 measure orchestration overhead and values above 1 the gain from running jobs in parallel.
Per-stage wall times come from the jobs' ``benchmark:`` files. Both run the demo's spot tasks
(the sheet's and the HEST-Bench folder's) with every configured head; the bulk and PEKA jobs
are left out of the pipeline's config, as the reference has no counterpart for them. A stalled
SLURM start-up probe is kept out of the Snakemake runs and reported on its own (see
``slurm_probe.py``).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from slurm_probe import slurm_probe

REPO = Path(__file__).resolve().parents[1]


def _direct(cohort: Path, work: Path, cfg: dict) -> dict[str, float]:
    from histofuse import settings
    from histofuse.embed import embed_shard
    from histofuse.fit import fit_task
    from histofuse.heads.names import FUSION_HEADS
    from histofuse.plan.names import concat_name
    from histofuse.report.build import build_report
    from histofuse.samples import load_samples
    from histofuse.slides.spec import TilingSpec
    from histofuse.slides.tiling import tile_spots, write_tiles

    times: dict[str, float] = {}
    sheet = load_samples(cohort / "samples.tsv")
    spec = TilingSpec.from_config(cfg["tiling"])
    t = time.perf_counter()
    tiles = []
    for sample, row in sheet.iterrows():
        table, meta = tile_spots(row["slide"], row["expression"], spec)
        tiles.append(work / "tiles" / f"{sample}.parquet")
        write_tiles(table, meta, tiles[-1])
    bench_tiles = _tile_hest_bench(work, cfg)
    times["tile"] = time.perf_counter() - t
    t = time.perf_counter()
    stores, bench_stores = {}, {}
    for enc in cfg["encoders"]:
        stores[enc] = work / "features" / enc / "0000.zarr"
        embed_shard(tiles, enc, stores[enc], batch_size=cfg["embed"]["batch_size"], device="cpu")
        if bench_tiles:  # the HEST-Bench task's patches: a shard of their own, as in the pipeline
            bench_stores[enc] = work / "features" / enc / "0001.zarr"
            embed_shard(
                bench_tiles,
                enc,
                bench_stores[enc],
                batch_size=cfg["embed"]["batch_size"],
                device="cpu",
            )
    times["embed"] = time.perf_counter() - t
    t = time.perf_counter()
    sets = [[e] for e in cfg["encoders"]] + cfg["feature_sets"]["concat"]
    metrics = []
    for task_name, task in cfg["tasks"].items():
        task_stores = bench_stores if task.get("hest_bench") else stores
        for encs in sets:
            name = concat_name(encs)
            for head, params in cfg["heads"].items():
                if head in FUSION_HEADS and len(encs) == 1:
                    continue  # as the workflow: fusion heads run on concat groups only
                if head not in (task.get("heads") or cfg["heads"]):
                    continue  # as the workflow: a task may name its heads
                metrics.append(work / "metrics" / task_name / name / f"{head}.parquet")
                fit_task(
                    task_name,
                    settings.load(
                        settings.Task,
                        "tasks",
                        {
                            k: str(cohort.parents[1] / v) if k == "hest_bench" else v
                            for k, v in task.items()
                        },
                    ),
                    cohort / "samples.tsv",
                    [task_stores[e] for e in encs],
                    name,
                    head,
                    params or {},
                    metrics[-1],
                    work / "pred" / task_name / name / f"{head}.parquet",
                )
    times["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    build_report(metrics, work / "report")
    times["report"] = time.perf_counter() - t
    return times


def _tile_hest_bench(work: Path, cfg: dict) -> list[Path]:
    """Tiles the pre-cut patches of the config's HEST-Bench tasks (the demo's folder)."""
    from histofuse.hest_bench import bench_samples
    from histofuse.slides.patches import patch_tiles
    from histofuse.slides.spec import TilingSpec
    from histofuse.slides.tiling import write_tiles

    tiles = []
    for name, task in cfg["tasks"].items():
        if not task.get("hest_bench"):
            continue
        folder = work.parent / "pipeline" / task["hest_bench"]
        for sample, row in bench_samples(name, folder).iterrows():
            table, meta = patch_tiles(row["patches"], TilingSpec.from_config(cfg["tiling"]))
            tiles.append(work / "tiles" / f"{sample}.parquet")
            write_tiles(table, {**meta, "sample": sample}, tiles[-1])
    return tiles


def _stage_seconds(work: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for tsv in (work / "logs" / "benchmark").rglob("*.tsv"):
        rule = tsv.relative_to(work / "logs" / "benchmark").parts[0]
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        out[rule] = out.get(rule, 0.0) + float(row["s"])
    return out


def _timed_snakemake(work: Path, config: Path, env: dict[str, str], bindir: Path) -> float:
    """Runs the demo workflow in ``work`` and returns its wall time in seconds."""
    t = time.perf_counter()
    subprocess.run(
        [
            str(bindir / "snakemake"),
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(work),
            "--configfile",
            str(config),
            "--cores",
            "2",
            "--quiet",
            "all",
        ],
        check=True,
        env=env,
        cwd=work,
    )
    return time.perf_counter() - t


def run(tmp: Path) -> dict:
    from histofuse.demo import write_demo_cohort

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    # Both sides run the spot tasks (the sheet's and the HEST-Bench folder's); the demo's bulk and
    # PEKA jobs have no in-process reference here.
    cfg["bulk"] = {}
    cfg["peka"]["encoders"] = []
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    d = cfg["demo"]
    t = time.perf_counter()
    cohort = tmp / "pipeline" / "resources" / "demo"
    write_demo_cohort(
        cohort,
        seed=d["seed"],
        n_patients=d["patients"],
        slides_per_patient=d["slides_per_patient"],
        n_genes=d["genes"],
    )
    if d.get("hest_bench"):
        from histofuse.demo import write_demo_hest_bench

        t_cfg = cfg["tiling"]
        write_demo_hest_bench(
            cohort,
            patch_px=round(t_cfg["patch_um"] / t_cfg["target_mpp"]),
            patch_mpp=t_cfg["target_mpp"],
        )
    generate = time.perf_counter() - t

    os.environ.setdefault("OMP_NUM_THREADS", str(cfg["embed"]["threads"]))
    direct = _direct(cohort, tmp / "direct", cfg)

    bindir = Path(sys.executable).parent
    probe, shim = slurm_probe(tmp)
    path = [*([str(shim)] if shim else []), str(bindir), os.environ["PATH"]]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    pipeline = _timed_snakemake(tmp / "pipeline", config, env, bindir)
    noop = _timed_snakemake(tmp / "pipeline", config, env, bindir)
    stages = _stage_seconds(tmp / "pipeline")
    shutil.rmtree(tmp / "pipeline", ignore_errors=True)
    direct_total = sum(direct.values())
    return {
        "ratio": direct_total / pipeline,
        "reference": "the same stages as plain function calls in one process",
        "pipeline_seconds": pipeline,
        "reference_seconds": direct_total,
        "noop_rerun_seconds": noop,
        "slurm_probe_seconds": probe,
        "slurm_probe_bypassed": shim is not None,
        "generate_cohort_seconds": generate,
        "pipeline_stage_seconds": stages,
        "reference_stage_seconds": direct,
    }
