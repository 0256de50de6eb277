from pathlib import Path

import pytest
import yaml

from histofuse.config import load_schema, validate_config
from histofuse.errors import HistofuseError
from histofuse.plan import Plan

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema()


def demo_config():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_demo_config_is_valid_and_gets_defaults():
    cfg = validate_config(demo_config(), SCHEMA)
    assert cfg["embed"]["dtype"] == "float16"  # default filled in
    assert cfg["tasks"]["demo-spots"]["genes"]["list"] is None
    assert cfg["weights"] == {}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["tiling"].update(patch_umm=3),
            r"unknown config key\(s\) 'patch_umm' under `tiling`",
        ),
        (lambda c: c.update(encoder=["x"]), r"unknown config key\(s\) 'encoder'"),
        (lambda c: c["tiling"].update(patch_um="big"), r"config `tiling.patch_um` = 'big'"),
        (lambda c: c["embed"].update(dtype="int8"), r"config `embed.dtype` is 'int8'"),
        (lambda c: c.update(tasks=[]), r"config `tasks` = \[\] is invalid"),
        (lambda c: c.pop("encoders"), r"required key.*encoders"),
        (
            lambda c: c["tasks"]["demo-spots"]["split"].update(n_folds=1),
            r"tasks.demo-spots.split.n_folds",
        ),
    ],
)
def test_bad_config_names_the_key(mutate, message):
    cfg = demo_config()
    mutate(cfg)
    with pytest.raises(HistofuseError, match=message):
        validate_config(cfg, SCHEMA)


def test_not_a_mapping():
    with pytest.raises(HistofuseError, match="mapping"):
        validate_config(["a"], SCHEMA)


def test_plan_rejects_unknown_encoder_and_stray_sets():
    cfg = demo_config()
    cfg["encoders"] = ["tiny-vit", "uni-typo"]
    with pytest.raises(HistofuseError, match="unknown encoder 'uni-typo'"):
        Plan.from_config(validate_config(cfg, SCHEMA))
    cfg = demo_config()
    cfg["feature_sets"]["concat"] = [["tiny-vit", "tiny-vit-mean"]]
    with pytest.raises(HistofuseError, match="not in `encoders`"):
        Plan.from_config(validate_config(cfg, SCHEMA))


def test_plan_of_the_demo():
    plan = Plan.from_config(validate_config(demo_config(), SCHEMA))
    sheet = plan.task_samples("demo-spots")
    bench = plan.task_samples("demo-bench")  # the HEST-Bench task: P*-S1 as pre-cut patches
    assert len(sheet) == 6 and plan.samples.loc[sheet, "patient_id"].nunique() == 3
    assert bench == ["demo-bench.P1-S1", "demo-bench.P2-S1", "demo-bench.P3-S1"]
    assert plan.shards == {"0000": sheet, "0001": bench}
    assert plan.feature_sets == {
        "tiny-vit": ["tiny-vit"],
        "tiny-cnn": ["tiny-cnn"],
        "tiny-cnn+tiny-vit": ["tiny-cnn", "tiny-vit"],
    }
    assert plan.embed_key("tiny-vit") != plan.embed_key("tiny-cnn")


def test_shards_are_sheet_order_blocks():
    cfg = demo_config()
    cfg["tasks"].pop("demo-bench")
    cfg["embed"]["shard_size"] = 4
    plan = Plan.from_config(validate_config(cfg, SCHEMA))
    ids = list(plan.samples.index)
    assert plan.shards == {"0000": ids[:4], "0001": ids[4:]}
    assert plan.shards_of(ids[4:5]) == ["0001"]
    assert plan.shards_of([ids[5], ids[0]]) == ["0000", "0001"]  # shard order, not query order


def test_task_lookups_are_answered_once_and_stay_correct():
    cfg = demo_config()
    cfg["embed"]["shard_size"] = 4
    cfg["tasks"]["two"] = {**cfg["tasks"]["demo-spots"], "samples": None}
    plan = Plan.from_config(validate_config(cfg, SCHEMA))
    ids = plan.task_samples("demo-spots")  # the sheet's slides; the HEST-Bench task's follow
    assert len(ids) == 6 and len(plan.samples) > len(ids)
    cfg_two = plan.config["tasks"]["two"]
    cfg_two["samples"] = ids[4:]
    assert plan.task_samples("two") == ids[4:]
    assert plan.task_shards("two") == ["0001"]
    assert plan.task_shards("demo-spots") == ["0000", "0001"]
    # callers may mutate what they get without corrupting the memo
    plan.task_samples("two").append("nope")
    plan.task_shards("two").clear()
    assert plan.task_samples("two") == ids[4:]
    assert plan.task_shards("two") == ["0001"]
    assert plan.embed_key("tiny-vit") is plan.embed_key("tiny-vit")


def test_shard_assignment_is_append_only(tmp_path):
    from histofuse.plan import assign_shards, read_registry

    first = assign_shards(["a", "b", "c"], 2, {})
    assert first == {"0000": ["a", "b"], "0001": ["c"]}
    known = {s: shard for shard, members in first.items() for s in members}
    # new samples never join the partial shard 0001: they go to new shards
    again = assign_shards(["a", "b", "c", "d", "e", "f"], 2, known)
    assert again == {"0000": ["a", "b"], "0001": ["c"], "0002": ["d", "e"], "0003": ["f"]}
    # a removed sample leaves its shard smaller; shard ids are never reused
    assert assign_shards(["a", "c", "g"], 2, known) == {"0000": ["a"], "0001": ["c"], "0002": ["g"]}
    assert read_registry(tmp_path / "none.tsv") == {}


def test_plan_saves_and_reuses_its_registry(tmp_path):
    cfg = demo_config()
    cfg["tasks"].pop("demo-bench")
    cfg = validate_config(cfg, SCHEMA)
    cfg["embed"]["shard_size"] = 4
    registry = tmp_path / "shards.tsv"
    plan = Plan.from_config(cfg, registry)
    plan.save_registry(registry)
    cfg["demo"]["patients"] = 4
    grown = Plan.from_config(cfg, registry)
    assert grown.shards["0000"] == plan.shards["0000"]
    assert grown.shards["0001"] == plan.shards["0001"]  # the partial shard stays as it was
    assert grown.shards["0002"] == ["P4-S1", "P4-S2"]
