"""Heads are checked when the config is planned, with the messages the fit jobs give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from histofuse.config import load_schema, validate_config
from histofuse.errors import HistofuseError
from histofuse.plan.heads import check_heads

REPO = Path(__file__).resolve().parents[1]


def _config(**changes) -> dict:
    """The demo config with some sections replaced, validated (defaults filled in)."""
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg.update(changes)
    return validate_config(cfg, load_schema())


def _fit_message(make, *args) -> str:
    with pytest.raises(HistofuseError) as err:
        make(*args)
    return str(err.value)


def test_the_name_tables_match_the_estimators():
    from histofuse.bulk.heads import ABMILRegressor, SlideHead
    from histofuse.heads.names import ABMIL_PARAMS, HEAD_PARAMS, SLIDE_HEAD_PARAMS
    from histofuse.heads.probes import HEADS

    def params(est) -> set[str]:
        return set(est.get_params()) - {"strategy", "blocks"}

    assert set(HEAD_PARAMS) == set(HEADS)
    for name, build in HEADS.items():
        assert HEAD_PARAMS[name] == params(build()), name
    assert params(SlideHead()) == SLIDE_HEAD_PARAMS
    assert params(ABMILRegressor()) == ABMIL_PARAMS


def test_the_demo_config_passes():
    check_heads(_config())


def test_planning_imports_neither_torch_nor_scikit_learn():
    code = (
        "import sys; import histofuse.plan.heads; "
        "print(any(m in sys.modules for m in ('torch', 'sklearn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_spot_head_gives_the_fit_jobs_message():
    from histofuse.heads.probes import make_head

    with pytest.raises(HistofuseError) as err:
        check_heads(_config(heads={"hest": {}, "hset": {}}))
    assert str(err.value) == "config `heads.hset`: " + _fit_message(make_head, "hset")


@pytest.mark.parametrize(
    ("head", "params"), [("hest", {"alphas": [1.0]}), ("mlp", {"lr": 1e-3, "dropout": 0.1})]
)
def test_an_unknown_hyperparameter_gives_the_fit_jobs_message(head, params):
    from histofuse.heads.probes import make_head

    with pytest.raises(HistofuseError) as err:
        check_heads(_config(heads={head: params}))
    assert str(err.value) == f"config `heads.{head}`: " + _fit_message(make_head, head, params)


def test_task_and_peka_heads_must_be_configured():
    cfg = _config()
    task = next(iter(cfg["tasks"]))
    cfg["tasks"][task]["heads"] = ["ridge"]
    with pytest.raises(HistofuseError, match=rf"`tasks.{task}.heads` names \['ridge'\]"):
        check_heads(cfg)
    cfg = _config()
    cfg["peka"]["encoders"], cfg["peka"]["heads"] = cfg["encoders"][:1], ["ridge"]
    with pytest.raises(HistofuseError, match=r"`peka.heads` names \['ridge'\]"):
        check_heads(cfg)


def _bulk(**spec) -> dict:
    return _config(bulk={"b": {"table": "bulk.csv", **spec}})


def test_bulk_heads_and_hyperparameters_give_the_fit_jobs_message():
    from histofuse.bulk.evaluate import make_slide_head

    with pytest.raises(HistofuseError) as err:
        check_heads(_bulk(heads={"hest": {}}))
    msg = _fit_message(make_slide_head, "mean", "hest", {}, 1)
    assert str(err.value) == "config `bulk.b.heads.hest`: " + msg
    # attention_dim belongs to ABMIL: refused for the mean-pooled job
    with pytest.raises(HistofuseError) as err:
        check_heads(_bulk(heads={"mlp": {"attention_dim": 64}}))
    msg = _fit_message(make_slide_head, "mean", "mlp", {"attention_dim": 64}, 1)
    assert str(err.value) == "config `bulk.b.heads.mlp`: " + msg
    # ... and taken under `abmil` when only ABMIL jobs run; a typo there is refused
    check_heads(_bulk(aggregations=["abmil"], heads={"mlp": {"attention_dim": 64}}))
    with pytest.raises(HistofuseError) as err:
        check_heads(_bulk(abmil={"atention_dim": 64}))
    msg = _fit_message(make_slide_head, "abmil", "mlp", {"atention_dim": 64}, 1)
    assert str(err.value) == "config `bulk.b.heads.mlp`: " + msg
