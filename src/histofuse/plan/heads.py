"""Heads checked when the config is planned, before any job: names and hyperparameter names.

The fit jobs build their heads with :func:`histofuse.heads.probes.make_head` and
:func:`histofuse.bulk.evaluate.make_slide_head`, which refuse an unknown head or
hyperparameter; this module gives the same messages at parse time, prefixed by the config key,
from the name tables of :mod:`histofuse.heads.names` (no torch or scikit-learn import).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from histofuse.errors import HistofuseError
from histofuse.heads.names import ABMIL_PARAMS, HEAD_PARAMS, SLIDE_HEAD_PARAMS, TORCH_HEADS


def check_heads(config: Mapping[str, Any]) -> None:
    """Checks every head of a validated config and its hyperparameter names.

    ``heads`` names spot heads with their hyperparameters; ``tasks.<t>.heads`` and
    ``peka.heads`` pick from ``heads``; ``bulk.<t>.heads`` names slide heads with theirs (and
    ``bulk.<t>.abmil`` adds to them for the ABMIL jobs).

    Args:
        config: The validated config (defaults filled in).

    Raises:
        HistofuseError: Naming the config key, the head and, for a hyperparameter, the ones it
            takes.
    """
    heads = config.get("heads") or {}
    for name, params in heads.items():
        _check_spot_head(name, params or {})
    for task, spec in (config.get("tasks") or {}).items():
        _check_picked(f"tasks.{task}.heads", spec.get("heads") or [], heads)
    peka = config.get("peka") or {}
    if peka.get("encoders"):
        _check_picked("peka.heads", peka.get("heads") or [], heads)
    for task, spec in (config.get("bulk") or {}).items():
        _check_bulk_heads(task, spec)


def _check_picked(key: str, picked: Iterable[str], heads: Mapping[str, Any]) -> None:
    unknown = sorted(set(picked) - set(heads))
    if unknown:
        raise HistofuseError(f"config `{key}` names {unknown}, which are not in `heads`")


def _unknown_params(label: str, params: Iterable[str], valid: frozenset[str]) -> str | None:
    unknown = sorted(set(params) - valid)
    if not unknown:
        return None
    return (
        f"{label} has no hyperparameter(s) {', '.join(unknown)}; "
        f"it takes {', '.join(sorted(valid))}"
    )


def _check_spot_head(name: str, params: Mapping[str, Any]) -> None:
    if name not in HEAD_PARAMS:
        raise HistofuseError(
            f"config `heads.{name}`: unknown head {name!r}; choose one of "
            f"{', '.join(sorted(HEAD_PARAMS))}"
        )
    problem = _unknown_params(f"head {name!r}", params, HEAD_PARAMS[name])
    if problem:
        raise HistofuseError(f"config `heads.{name}`: {problem}")


def _check_bulk_heads(task: str, spec: Mapping[str, Any]) -> None:
    aggregations = list(spec.get("aggregations", ["mean", "abmil"]))
    if spec.get("slide_embeddings"):
        aggregations.append("slide")
    abmil = dict(spec.get("abmil") or {})
    for head, params in (spec.get("heads") or {"mlp": {}}).items():
        key = f"config `bulk.{task}.heads.{head}`"
        if head not in TORCH_HEADS:
            raise HistofuseError(
                f"{key}: unknown bulk head {head!r}; choose one of {', '.join(TORCH_HEADS)}"
            )
        for agg in aggregations:
            given, valid = (
                ({**(params or {}), **abmil}, ABMIL_PARAMS)
                if agg == "abmil"
                else (params or {}, SLIDE_HEAD_PARAMS)
            )
            problem = _unknown_params(f"bulk head {agg}-{head}", given, valid)
            if problem:
                raise HistofuseError(f"{key}: {problem}")
