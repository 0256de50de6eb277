"""The library a user finds: the README's three lines read a real cached encoder.

The store is embedded by the real embed stage (``tiny-vit`` on the CPU) from real spot tiles.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

README_SNIPPET = """\
import anndata, histofuse
table = histofuse.open_features("results/features/tiny-vit/0000.zarr")  # one store or a list
adata = anndata.AnnData(table.load(), obs=table.index.rename(index=str))  # numpy X, pandas obs
"""
"""The README's example, verbatim: it runs in a directory holding the store it names."""


@pytest.fixture(scope="module")
def store(small_tiles, tmp_path_factory) -> Path:
    from histofuse.embed import embed_shard

    out = tmp_path_factory.mktemp("library") / "results/features/tiny-vit/0000.zarr"
    embed_shard([small_tiles[s] for s in sorted(small_tiles)[:2]], "tiny-vit", out, device="cpu")
    return out


def test_the_readme_example_reads_a_store_into_anndata(store, small_tiles, monkeypatch):
    import pandas as pd

    monkeypatch.chdir(store.parents[2].parent)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no implicit index conversion or dtype surprise
        exec(compile(README_SNIPPET, "README.md", "exec"), scope)
    adata = scope["adata"]
    samples = sorted(small_tiles)[:2]
    n_tiles = sum(len(pd.read_parquet(small_tiles[s])) for s in samples)
    assert adata.shape == (n_tiles, 192)  # tiny-vit's width
    assert isinstance(adata.X, np.ndarray) and np.isfinite(adata.X).all()
    assert list(adata.obs.columns) == ["sample", "barcode", "x", "y"]
    assert adata.obs["sample"].unique().tolist() == samples
    assert adata.obs["barcode"].str.len().gt(0).all()


def test_one_path_is_one_store_not_its_characters(store):
    from histofuse import FeatureTable, open_features

    by_list = open_features([store]).load()
    for one in (store, str(store)):
        table = open_features(one)
        assert isinstance(table, FeatureTable)
        np.testing.assert_array_equal(table.load(), by_list)
    two = open_features((store, store))  # any iterable of paths, e.g. the shards of an encoder
    assert two.features.shape == (2 * len(by_list), by_list.shape[1])


def test_importing_histofuse_imports_no_heavy_library():
    code = (
        "import sys, histofuse\n"
        "heavy = [m for m in ('torch', 'zarr', 'dask', 'numpy', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert 'open_features' in dir(histofuse)\n"
        "histofuse.FeatureTable\n"
        "assert 'pandas' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_an_unknown_top_level_name_is_an_attribute_error():
    import histofuse

    with pytest.raises(AttributeError, match="no attribute 'open_feature'"):
        histofuse.open_feature  # noqa: B018


def _verbs():
    """``(verb, parser)`` of every verb of the ``histofuse`` command."""
    import argparse

    from histofuse.cli import build_parser

    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return [("histofuse", top), *sub.choices.items()], sub


def test_every_verb_and_argument_has_help_and_every_option_its_default():
    _, sub = _verbs()
    assert all(choice.help for choice in sub._choices_actions)
    verbs, _ = _verbs()
    missing, no_default = [], []
    for verb, parser in verbs:
        for action in parser._actions:
            name = f"{verb} {action.option_strings or action.dest}"
            if not (action.help or "").strip():
                missing.append(name)
            optional = action.option_strings and not action.required
            if optional and action.dest not in ("help", "version") and "default" not in action.help:
                no_default.append(name)
    assert not missing, f"arguments without help: {missing}"
    assert not no_default, f"options whose help names no default: {no_default}"


def test_plumbing_is_marked_as_the_workflows():
    verbs = dict(_verbs()[0])
    helps = {
        (verb, opt): a.help
        for verb, p in verbs.items()
        for a in p._actions
        for opt in a.option_strings
    }
    for verb, flag in [("fit", "--cache-keys"), ("tile", "--on-error"), ("tile", "--hest-bench")]:
        assert "used by the workflow" in helps[verb, flag]
    _, sub = _verbs()
    tokens = next(c for c in sub._choices_actions if c.dest == "tokens")
    assert "used by the workflow" in tokens.help


def test_a_task_json_built_as_its_help_says_is_the_workflows(tmp_path):
    """``--task-json``: the config's ``tasks.<name>`` block in a file, or ``{}`` for defaults."""
    import yaml

    from histofuse import settings
    from histofuse.cli import document
    from histofuse.config import load_schema, validate_config
    from histofuse.plan import Plan

    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    block = tmp_path / "tasks.yaml"
    block.write_text(yaml.safe_dump(cfg["tasks"]["demo-spots"]))
    plan = Plan.from_config(validate_config(cfg, load_schema()))

    def load(value):
        return settings.load(settings.Task, "tasks", document(value, "--task-json"))

    assert load(str(block)) == load(plan.task_json("demo-spots"))
    assert load("{}") == settings.load(settings.Task, "tasks", {})
