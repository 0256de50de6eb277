"""A store made from another configuration than the run's is refused by its readers.

The store is embedded by the real embed stage (``tiny-vit`` on the CPU) from real spot tiles;
the expected key parts come from the plan of a real config, as the workflow's rules pass them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from histofuse.config import load_schema, validate_config
from histofuse.errors import HistofuseError
from histofuse.evaluation.features import stores_by_encoder
from histofuse.plan import Plan

REPO = Path(__file__).resolve().parents[1]


def _plan(tiling=None, embed=None, weights=None) -> Plan:
    """The demo config's plan, tiled as the ``small_tiles`` fixture is (56 µm at 1 µm/px)."""
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["tiling"].update({"patch_um": 56, "target_mpp": 1.0, **(tiling or {})})
    cfg["embed"].update(embed or {})
    cfg["weights"] = weights or {}
    return Plan.from_config(validate_config(cfg, load_schema()))


@pytest.fixture(scope="module")
def store(small_tiles, tmp_path_factory) -> Path:
    from histofuse.embed import embed_shard

    out = tmp_path_factory.mktemp("keys") / "results/features/tiny-vit/0000.zarr"
    embed_shard([small_tiles[s] for s in sorted(small_tiles)[:2]], "tiny-vit", out, device="cpu")
    return out


def _keys(plan: Plan) -> dict:
    return json.loads(plan.cache_keys("demo-spots", "tiny-vit"))


def test_a_store_of_the_configured_key_is_accepted(store):
    assert stores_by_encoder([store], _keys(_plan())) == {"tiny-vit": [store]}


@pytest.mark.parametrize(
    ("tiling", "embed", "says"),
    [
        ({"patch_um": 112}, None, r"`tiling`: store '\w+', config '\w+'"),
        (None, {"dtype": "float32"}, r"`embed.dtype`: store 'float16', config 'float32'"),
    ],
)
def test_a_store_made_otherwise_is_refused_with_the_fix(store, tiling, embed, says):
    keys = _keys(_plan(tiling, embed))
    with pytest.raises(HistofuseError, match=says) as err:
        stores_by_encoder([store], keys)
    assert "snakemake --forcerun" in str(err.value)
    assert str(store.with_name("0000.manifest.json").name) in str(err.value)


def test_the_fit_verb_refuses_a_stale_store_before_any_work(store, small_cohort, tmp_path, capsys):
    """As after copying a cache into a fresh clone and changing ``tiling.patch_um``."""
    from histofuse.cli import main

    plan = _plan({"patch_um": 112})
    metrics = tmp_path / "m.parquet"
    argv = [
        "fit",
        "--task=demo-spots",
        f"--task-json={plan.task_json('demo-spots')}",
        f"--samples={small_cohort}",
        f"--stores={store}",
        "--features=tiny-vit",
        "--head=ridge",
        f"--metrics={metrics}",
        f"--predictions={tmp_path / 'p.parquet'}",
        f"--cache-keys={plan.cache_keys('demo-spots', 'tiny-vit')}",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "another configuration than this run's (`tiling`" in err
    assert "snakemake --forcerun" in err and not metrics.exists()


def test_hest_bench_tasks_expect_the_patches_tiling():
    """Pre-cut patches are keyed by their size and µm/px alone: a tiling setting that only
    slides use changes the key of sheet tasks, not that of a HEST-Bench task."""
    plain, other = _plan(), _plan({"spot_min_tissue": 0.5})

    def tiling(plan, task):
        return json.loads(plan.cache_keys(task, "tiny-vit"))["tiny-vit"]["tiling"]

    assert tiling(plain, "demo-spots") != tiling(other, "demo-spots")
    assert tiling(plain, "demo-bench") == tiling(other, "demo-bench")
    assert json.loads(plain.cache_keys("demo-spots", "tiny-cnn+tiny-vit")).keys() == {
        "tiny-vit",
        "tiny-cnn",
    }


def test_slide_bags_and_feature_sets_refuse_a_stale_store(store, small_tiles):
    from histofuse.bulk.bags import SlideBags
    from histofuse.evaluation.features import load_feature_set

    stale = _keys(_plan({"patch_um": 112}))
    with pytest.raises(HistofuseError, match=r"another configuration than this run's \(`tiling`"):
        SlideBags.open([store], cache_keys=stale)
    with pytest.raises(HistofuseError, match=r"another configuration than this run's \(`tiling`"):
        load_feature_set([store], sorted(small_tiles), cache_keys=stale)
    with pytest.raises(HistofuseError, match="encoder tiny-vit, which this job does not read"):
        SlideBags.open([store], cache_keys={"tiny-cnn": stale["tiny-vit"]})
    assert SlideBags.open([store], cache_keys=_keys(_plan())).encoders == ["tiny-vit"]


def test_the_peka_verb_refuses_a_stale_token_store(small_tiles, small_cohort, tmp_path, capsys):
    """Token stores carry the same key parts, with the tokens' dtype (``peka.tokens_dtype``)."""
    from histofuse.cli import main
    from histofuse.peka.tokens import embed_tokens

    tokens = tmp_path / "results/tokens/tiny-vit/0000.zarr"
    embed_tokens([small_tiles[sorted(small_tiles)[0]]], "tiny-vit", tokens, 1, device="cpu")
    argv = [
        "peka",
        "--task=demo-spots",
        f"--task-json={_plan().task_json('demo-spots')}",
        f"--samples={small_cohort}",
        "--features=peka-tail:tiny-vit",
        f"--token-stores={tokens}",
        "--head=ridge",
        f"--metrics={tmp_path / 'm.parquet'}",
        f"--predictions={tmp_path / 'p.parquet'}",
    ]
    tokens_dtype = {"peka": '{"tokens_dtype": "float32"}'}
    stale = _plan({"patch_um": 112}).cache_keys("demo-spots", "peka-tail:tiny-vit")
    assert main([*argv, f"--cache-keys={stale}"]) == 2
    err = capsys.readouterr().err
    assert f"feature store {tokens} was made with another configuration" in err
    assert "(`tiling`" in err and "snakemake --forcerun" in err
    assert (
        main(
            [
                *argv,
                f"--peka={tokens_dtype['peka']}",
                f"--cache-keys={_plan().cache_keys('demo-spots', 'peka-tail:tiny-vit')}",
            ]
        )
        == 2
    )
    assert "`peka.tokens_dtype`: store 'float16', config 'float32'" in capsys.readouterr().err


def _save_tiny_vit(path: Path, seed: int) -> None:
    """A tiny-vit checkpoint; every seed's file has the same size (only tensor values differ)."""
    import torch

    from histofuse.encoders.model import build_trunk
    from histofuse.encoders.registry import get_spec

    state = build_trunk(get_spec("tiny-vit")).state_dict()
    generator = torch.Generator().manual_seed(seed)
    torch.save({k: torch.randn(v.shape, generator=generator) for k, v in state.items()}, path)


def _copy_back_in_time(src: Path, dst: Path) -> None:
    """As ``cp -p`` of a file older than ``dst``: new bytes, an mtime before the old one's."""
    import os
    import shutil

    old = dst.stat()
    os.utime(src, ns=(old.st_atime_ns - 10**10, old.st_mtime_ns - 10**10))
    shutil.copy2(src, dst)
    assert dst.stat().st_mtime_ns < old.st_mtime_ns and dst.stat().st_size == old.st_size


def test_a_weights_file_is_keyed_by_its_content_not_its_mtime(tmp_path, monkeypatch):
    """A weights file replaced by other weights with an older mtime changes the cache key."""
    from histofuse.digests import DIGESTS, sha256_file

    monkeypatch.chdir(tmp_path)
    weights, other = tmp_path / "w.pth", tmp_path / "v.pth"  # one name length: one size
    _save_tiny_vit(weights, seed=1)
    _save_tiny_vit(other, seed=2)

    def key(plan):
        return json.loads(plan.embed_key("tiny-vit")).get("weights_sha256")

    assert key(_plan(weights={"tiny-vit": str(weights)})) == sha256_file(weights)
    kept = json.loads(Path(DIGESTS).read_text())
    assert kept[str(weights.resolve())]["sha256"] == sha256_file(weights)
    _copy_back_in_time(other, weights)
    assert key(_plan(weights={"tiny-vit": str(weights)})) == sha256_file(other)
    assert key(_plan()) is None  # registry weights: no file to hash


def test_a_kept_digest_is_reused_only_for_the_same_file_version(tmp_path):
    from histofuse.digests import cached_sha256, sha256_file

    cache, data = tmp_path / "digests.json", tmp_path / "f.bin"
    data.write_bytes(b"a" * 100)
    assert cached_sha256(data, cache) == sha256_file(data)
    kept = json.loads(cache.read_text())
    kept[str(data.resolve())]["sha256"] = "kept"  # proves the next call reads the cache
    cache.write_text(json.dumps(kept))
    assert cached_sha256(data, cache) == "kept"
    data.write_bytes(b"b" * 100)  # same size, rewritten: its ctime moves
    assert cached_sha256(data, cache) == sha256_file(data)
    cache.write_text("{not json")  # a damaged cache is rebuilt, never trusted
    assert cached_sha256(data, cache) == sha256_file(data)


def test_a_store_of_other_weights_bytes_is_refused(small_tiles, tmp_path, monkeypatch):
    """As after copying a cache made with one checkpoint and replacing the file in place."""
    from histofuse.embed import embed_shard

    monkeypatch.chdir(tmp_path)
    weights, other = tmp_path / "w.pth", tmp_path / "v.pth"  # one name length: one size
    _save_tiny_vit(weights, seed=1)
    _save_tiny_vit(other, seed=2)
    store = tmp_path / "results/features/tiny-vit/0000.zarr"
    tiles = [small_tiles[sorted(small_tiles)[0]]]
    embed_shard(tiles, "tiny-vit", store, weights=weights, device="cpu")
    plan_keys = _keys(_plan(weights={"tiny-vit": str(weights)}))
    assert stores_by_encoder([store], plan_keys) == {"tiny-vit": [store]}
    _copy_back_in_time(other, weights)
    with pytest.raises(HistofuseError, match="the content of the `weights` file: store '") as err:
        stores_by_encoder([store], _keys(_plan(weights={"tiny-vit": str(weights)})))
    assert "snakemake --forcerun" in str(err.value)


def test_a_missing_weights_file_is_named_at_parse_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HistofuseError, match=r"config `weights.tiny-vit`: cannot read gone.pth"):
        _plan(weights={"tiny-vit": "gone.pth"}).embed_key("tiny-vit")
