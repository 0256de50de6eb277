"""The plan package: result paths, the demo's planned files, and the jobs' inputs and params."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from histofuse.config import load_schema, validate_config
from histofuse.demo.layout import DemoLayout
from histofuse.errors import HistofuseError
from histofuse.plan import Plan, names, paths
from histofuse.plan.bulk import sources_flag

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema()


def demo_config(**sections) -> dict:
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for name, changes in sections.items():
        cfg[name].update(changes)
    return validate_config(cfg, SCHEMA)


@pytest.fixture(scope="module")
def plan() -> Plan:
    return Plan.from_config(demo_config())


def test_builders_fill_the_rules_patterns():
    assert paths.metrics("t", "a+b", "hest") == "results/metrics/t/a+b/hest.parquet"
    assert paths.predictions("t", "peka:a", "hest") == "results/predictions/t/peka:a/hest.parquet"
    assert (
        paths.bulk_metrics("t", "a", "abmil", "mlp") == "results/bulk/metrics/t/a/abmil-mlp.parquet"
    )
    assert paths.bulk_predictions("t", "a", "mean", "mlp").startswith("results/bulk/predictions/")
    store = paths.features("enc", "0003")
    assert paths.manifest_of(store) == paths.features_manifest("enc", "0003")
    assert paths.store_of(paths.manifest_of(store)) == store
    assert paths.manifest_of(paths.tokens("enc", "0003")) == "results/tokens/enc/0003.manifest.json"
    # a builder given wildcards is the pattern itself (the peka rule names its own wildcard)
    assert paths.metrics("{task}", "{features}", "{head}") == paths.METRICS
    assert paths.report("summary.csv") == "results/report/summary.csv"


def test_demo_samples_and_files_come_from_the_demo_layout(plan):
    layout = DemoLayout.from_config(plan.config)
    assert plan.demo == layout
    sheet = plan.samples.loc[layout.sample_ids]
    assert sheet["slide"].tolist() == [str(layout.slide(s)) for s in layout.sample_ids]
    assert sheet["expression"].tolist() == [str(layout.expression(s)) for s in layout.sample_ids]
    files = plan.demo_outputs()
    assert files.bulk == str(layout.bulk_table)
    assert files.hest_bench == [str(f) for f in layout.hest_bench_files()]
    everything = files.slides + files.expression + [files.bulk] + files.hest_bench
    assert len(everything) == len(set(everything))
    # the HEST-Bench task's samples and fit inputs are the files its generator will write
    bench = plan.samples.loc[plan.task_samples("demo-bench")]
    assert set(bench["patches"]) | set(bench["expression"]) <= set(files.hest_bench)
    fit_files = plan.bench_files("demo-bench")
    assert fit_files[-1] == str(layout.hest_bench_dir / "var_50genes.json")
    assert all("/splits/" in f for f in fit_files[:-1]) and len(fit_files) == 7
    assert plan.bench_files("demo-spots") == []
    assert "--hest-bench-px 112" in plan.demo_flags


def test_without_the_demo_nothing_is_planned_from_its_layout(tmp_path, small_cohort):
    cfg = demo_config()
    cfg["demo"]["enabled"] = False
    cfg["samples"] = str(small_cohort)
    cfg["tasks"].pop("demo-bench")
    table = tmp_path / "bulk.csv"
    cfg["bulk"]["demo-bulk"]["table"] = str(table)
    plan = Plan.from_config(cfg)
    assert plan.demo is None and plan.demo_outputs() is None
    with pytest.raises(HistofuseError, match=r"`bulk.demo-bulk.table`: \S*bulk.csv does not"):
        _ = plan.bulk  # no demo writes it
    table.write_text("id,G0\n")
    assert len(Plan.from_config(cfg).bulk.jobs) == 6


def test_fit_jobs_and_their_inputs(plan):
    jobs = plan.fit_jobs()
    fused = {h for t, f, h in jobs if f == "tiny-cnn+tiny-vit"}
    assert {h for t, f, h in jobs if f == "tiny-vit"} == {"hest", "linear"} < fused
    assert {h for t, f, h in jobs if t == "demo-bench"} == {"hest"}  # the task's `heads`
    assert plan.feature_manifests("demo-spots", "tiny-cnn+tiny-vit") == [
        "results/features/tiny-cnn/0000.manifest.json",
        "results/features/tiny-vit/0000.manifest.json",
    ]
    assert plan.feature_stores("demo-bench", "tiny-vit") == ["results/features/tiny-vit/0001.zarr"]
    assert re.fullmatch(plan.fit_features_pattern, "tiny-cnn+tiny-vit")
    assert not re.fullmatch(plan.fit_features_pattern, "peka:tiny-vit")
    assert json.loads(plan.task_json("demo-bench"))["heads"] == ["hest"]
    assert json.loads(plan.head_json("hest")) == plan.config["heads"]["hest"]
    assert plan.memory_flag == ""


def test_report_reads_every_job_once(plan):
    metrics, predictions = plan.metrics_files(), plan.prediction_files()
    assert len(metrics) == len(set(metrics)) == 16 + 3 + 6  # fit, peka, bulk
    assert [m.replace("metrics", "predictions", 1) for m in metrics] == predictions
    assert plan.qc_thumbnails() == [paths.tiles_qc(s) for s in plan.samples.index]


def test_peka_names_follow_the_grammar_and_read_their_caches():
    cfg = demo_config(peka={"modes": ["peka", "peka-tail", "teacher", "lora"]})
    cfg["peka"]["baseline_site"] = "tail"
    peka = Plan.from_config(cfg).peka
    assert set(peka.sets) == {"peka:tiny-vit", "peka-tail:tiny-vit", "teacher", "lora:tiny-vit"}
    assert all(re.fullmatch(names.PEKA_PATTERN, s) for s in peka.sets)
    assert peka.stores("demo-spots", "peka:tiny-vit") == ["results/features/tiny-vit/0000.zarr"]
    assert peka.token_stores("demo-spots", "peka:tiny-vit") == []
    for tail in ("peka-tail:tiny-vit", "lora:tiny-vit"):  # lora adapts the tail here
        assert peka.stores("demo-spots", tail) == []
        assert peka.manifests("demo-spots", tail) == ["results/tokens/tiny-vit/0000.manifest.json"]
    cfg["peka"]["heads"] = ["ridge"]
    with pytest.raises(HistofuseError, match=r"peka.heads` names \['ridge'\]"):
        _ = Plan.from_config(cfg).peka


def test_bulk_inputs_and_params(tmp_path):
    emb = tmp_path / "a b.csv"
    cfg = demo_config()
    cfg["bulk"]["demo-bulk"]["slide_embeddings"] = {"titan": [str(emb)]}
    bulk = Plan.from_config(cfg).bulk
    assert ("demo-bulk", "titan", "slide", "mlp") in bulk.jobs
    assert bulk.manifests("demo-bulk", "titan", "slide") == []
    assert bulk.embeddings("demo-bulk", "titan", "slide") == [str(emb)]
    assert bulk.embeddings("demo-bulk", "tiny-vit", "mean") == []
    # every sample of the run, the HEST-Bench shard included (as before the plan package)
    assert bulk.manifests("demo-bulk", "tiny-vit", "mean") == [
        paths.features_manifest("tiny-vit", s) for s in ("0000", "0001")
    ]
    assert json.loads(bulk.head_json("demo-bulk", "abmil", "mlp"))["attention_dim"] == 32
    assert "attention_dim" not in json.loads(bulk.head_json("demo-bulk", "mean", "mlp"))
    assert "table" not in json.loads(bulk.task_json("demo-bulk"))
    assert sources_flag("slide", [str(emb)], []) == f"--embeddings '{emb}'"
    manifests = [paths.features_manifest("e", "0000")]
    assert sources_flag("mean", [], manifests) == "--stores results/features/e/0000.zarr"


def test_embed_key_follows_the_tiling_geometry_not_its_run_policy():
    base = demo_config()
    key = Plan.from_config(base).embed_key("tiny-vit")

    def changed(**tiling) -> str:
        cfg = demo_config(tiling={**base["tiling"], **tiling})
        return Plan.from_config(cfg).embed_key("tiny-vit")

    assert changed(on_error="record", jobs="shard", max_upsample=3.0) == key
    assert changed(patch_um=56.0) != key
