"""Parse-time planning of the PEKA jobs (cheap: no torch, no PEFT, nothing is read).

The ``peka`` config section names the encoders to adapt, the modes (feature sets) and the heads
fitted on them. Each (task, feature set, head) is one job writing
``results/metrics/{task}/{features}/{head}.parquet`` like every other feature set; tail modes
also need the token cache ``results/tokens/{encoder}/{shard}.zarr``, written once per encoder
and shard, whose key holds only what shapes the tokens (encoder, weights, tiling, k, dtype), so
changing an adapter hyperparameter never reruns the embed or tokens jobs.
"""

from __future__ import annotations

import re
from typing import Any

from histofuse.errors import HistofuseError

#: ``features`` values produced by the ``peka`` rule (``teacher`` or ``<mode>:<encoder>``).
FEATURES_PATTERN = r"teacher|(?:peka|peka-tail|image\+peka|lora|adalora|hra):[A-Za-z0-9._-]+"
TAIL_MODES = ("peka-tail",)


def feature_sets(config: dict[str, Any]) -> dict[str, str]:
    """PEKA feature set name → the encoder whose cache it reads (``teacher``: the first one).

    Raises:
        HistofuseError: If ``peka.encoders`` or ``peka.heads`` name something not configured.
    """
    peka = config.get("peka") or {}
    encoders = list(peka.get("encoders") or [])
    if not encoders:
        return {}
    unknown = [e for e in encoders if e not in config["encoders"]]
    if unknown:
        raise HistofuseError(f"config `peka.encoders` names {unknown}, which are not in `encoders`")
    heads = [h for h in peka.get("heads") or [] if h not in config["heads"]]
    if heads:
        raise HistofuseError(f"config `peka.heads` names {heads}, which are not in `heads`")
    out: dict[str, str] = {}
    for mode in peka.get("modes") or []:
        if mode == "teacher":
            out["teacher"] = encoders[0]
        else:
            out.update({f"{mode}:{e}": e for e in encoders})
    return out


def uses_tokens(config: dict[str, Any], features: str) -> bool:
    """Whether a PEKA feature set trains on the token cache."""
    mode = features.partition(":")[0]
    baseline_tail = (config.get("peka") or {}).get("baseline_site") == "tail"
    return mode in TAIL_MODES or (baseline_tail and mode in ("lora", "adalora", "hra"))


def metrics_files(config: dict[str, Any]) -> list[str]:
    """Metrics files of every PEKA job."""
    peka = config.get("peka") or {}
    heads = peka.get("heads") or []
    sheet_tasks = [t for t, spec in config["tasks"].items() if not spec.get("hest_bench")]
    tasks = peka.get("tasks") or sheet_tasks
    unknown = [t for t in tasks if t not in config["tasks"]]
    if unknown:
        raise HistofuseError(f"config `peka.tasks` names {unknown}, which are not in `tasks`")
    bench = [t for t in tasks if t not in sheet_tasks]
    if bench:
        raise HistofuseError(
            f"config `peka.tasks` names HEST-Bench task(s) {bench}; PEKA runs on sample-sheet "
            "tasks only, so remove them from `peka.tasks`"
        )
    return [
        f"results/metrics/{task}/{features}/{head}.parquet"
        for task in tasks
        for features in feature_sets(config)
        for head in heads
    ]


def is_peka(features: str) -> bool:
    """Whether a feature set name belongs to the ``peka`` rule."""
    return re.fullmatch(FEATURES_PATTERN, features) is not None
