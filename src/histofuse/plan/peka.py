"""The workflow's PEKA jobs, planned at parse time (cheap: no torch, no PEFT, nothing is read).

The ``peka`` config section names the encoders to adapt, the modes (feature sets) and the heads
fitted on them. Each (task, feature set, head) is one job writing
``results/metrics/{task}/{features}/{head}.parquet`` like every other feature set; tail modes
also need the token cache ``results/tokens/{encoder}/{shard}.zarr``, written once per encoder
and shard, whose key holds only what shapes the tokens (encoder, weights, tiling, k, dtype), so
changing an adapter hyperparameter never reruns the embed or tokens jobs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from histofuse.errors import HistofuseError
from histofuse.plan import names, paths

if TYPE_CHECKING:
    from histofuse.plan.core import Plan


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
    return {
        names.peka_name(mode, e): e
        for mode in peka.get("modes") or []
        for e in (encoders[:1] if mode == names.TEACHER else encoders)
    }


def uses_tokens(config: dict[str, Any], features: str) -> bool:
    """Whether a PEKA feature set trains on the token cache."""
    mode = names.parse(features).mode
    baseline_tail = (config.get("peka") or {}).get("baseline_site") == "tail"
    return mode in names.TAIL_MODES or (baseline_tail and mode in names.BASELINE_MODES)


def jobs(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(task, features, head) of every PEKA job.

    Raises:
        HistofuseError: If ``peka.tasks`` names an unknown task or a HEST-Bench task.
    """
    peka = config.get("peka") or {}
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
    sets = feature_sets(config)
    return [(task, fs, head) for task in tasks for fs in sets for head in peka.get("heads") or []]


def metrics_files(config: dict[str, Any]) -> list[str]:
    """Metrics files of every PEKA job."""
    return [paths.metrics(*job) for job in jobs(config)]


class PekaPlan:
    """The PEKA jobs of a plan and the caches each reads (feature sets checked when built).

    Attributes:
        sets: PEKA feature set name → the encoder whose cache it reads.
    """

    def __init__(self, plan: Plan) -> None:
        """Plans the PEKA feature sets of ``plan``.

        Raises:
            HistofuseError: If ``peka.encoders`` or ``peka.heads`` name something not configured.
        """
        self._plan = plan
        self.sets = feature_sets(plan.config)

    def jobs(self) -> list[tuple[str, str, str]]:
        """(task, features, head) of every ``peka`` job (see :func:`jobs`)."""
        return jobs(self._plan.config)

    def stores(self, task: str, features: str) -> list[str]:
        """The feature stores a job reads (none for modes on the token cache)."""
        encoder = self.sets[features]
        if uses_tokens(self._plan.config, features):
            return []
        return [paths.features(encoder, s) for s in self._plan.task_shards(task)]

    def token_stores(self, task: str, features: str) -> list[str]:
        """The token caches a job reads (only modes on the token cache)."""
        encoder = self.sets[features]
        if not uses_tokens(self._plan.config, features):
            return []
        return [paths.tokens(encoder, s) for s in self._plan.task_shards(task)]

    def manifests(self, task: str, features: str) -> list[str]:
        """The manifests of :meth:`stores` and :meth:`token_stores`, the job's inputs."""
        stores = self.stores(task, features) + self.token_stores(task, features)
        return [paths.manifest_of(s) for s in stores]
