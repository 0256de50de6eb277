"""The plan of a workflow run, computed once at Snakemake parse time.

Everything here is cheap (no torch, no slides opened): the sample table is read once, samples are
assigned to embed shards by their order in the sheet (append-only, kept in a registry), feature
sets are named, and the ``fit`` jobs are listed. Rules in ``workflow/rules/*.smk`` look their
inputs and params up in the :class:`Plan`; its ``bulk`` and ``peka`` parts plan those jobs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from histofuse.errors import HistofuseError
from histofuse.plan import demo as demo_plan
from histofuse.plan import names, paths
from histofuse.plan.design import check_splits
from histofuse.plan.heads import check_heads

if TYPE_CHECKING:
    from histofuse.demo.layout import DemoLayout
    from histofuse.plan.bulk import BulkPlan
    from histofuse.plan.peka import PekaPlan
    from histofuse.slides.spec import TilingSpec


#: ``tiling`` settings that change how jobs are cut or what a failing sample does, never a tile.
TILING_POLICY = ("on_error", "jobs")


def hest_bench_samples(
    config: dict[str, Any], demo: DemoLayout | None, taken: set[str]
) -> pd.DataFrame:
    """The samples of the config's ``hest_bench`` tasks, named ``{task}.{sample_id}``.

    A folder the demo generator will write (``demo.hest_bench``) is planned from the demo's
    layout; any other folder must exist.

    Raises:
        HistofuseError: If a folder is missing or malformed, a task also sets ``samples``, or a
            name collides with a sheet sample.
    """
    from histofuse.hest_bench import bench_samples

    tables = []
    for task, spec in config["tasks"].items():
        folder = spec.get("hest_bench")
        if not folder:
            continue
        if spec.get("samples"):
            raise HistofuseError(
                f"config `tasks.{task}`: `samples` and `hest_bench` exclude each other; the "
                "HEST-Bench folder's split files list the samples"
            )
        if demo_plan.writes_bench(demo, folder):
            tables.append(demo_plan.bench_samples(demo, task))
        elif not Path(folder).is_dir():
            raise HistofuseError(
                f"config `tasks.{task}.hest_bench`: {folder} is not a folder; point it at a "
                "HEST-Bench task folder (splits/, patches/, adata/, var_50genes.json)"
            )
        else:
            tables.append(bench_samples(task, folder))
    if not tables:
        return pd.DataFrame()
    table = pd.concat(tables)
    clash = sorted(set(table.index) & taken)
    if clash:
        raise HistofuseError(
            f"HEST-Bench sample {clash[0]!r} has the name of a sample of the sheet; rename the task"
        )
    return table


def read_registry(path: str | Path | None) -> dict[str, str]:
    """Reads the shard registry (sample id → shard id); empty if there is none yet."""
    if path is None or not Path(path).is_file():
        return {}
    lines = Path(path).read_text().splitlines()[1:]
    return dict(line.split("\t")[:2] for line in lines if line.strip())


def assign_shards(ids: list[str], size: int, known: dict[str, str]) -> dict[str, list[str]]:
    """Assigns samples to embed shards, append-only.

    Samples already in the registry keep their shard, so a finished shard's membership never
    changes when samples are added; new samples fill new shards (numbered after the highest
    shard ever used) in sheet order. Samples removed from the sheet leave their shard smaller.

    Args:
        ids: Sample ids in sheet order.
        size: Samples per new shard.
        known: Earlier assignments (sample id → shard id).

    Returns:
        Shard id (``0000``) → sample ids.
    """
    shards: dict[str, list[str]] = {}
    new = []
    for sample in ids:
        if sample in known:
            shards.setdefault(known[sample], []).append(sample)
        else:
            new.append(sample)
    start = max((int(s) for s in known.values()), default=-1) + 1
    for k, i in enumerate(range(0, len(new), size)):
        shards[f"{start + k:04d}"] = new[i : i + size]
    return dict(sorted(shards.items()))


def check_encoders(config: dict[str, Any]) -> None:
    """Stops on an unknown encoder, or weights for an encoder that is not embedded.

    Raises:
        HistofuseError: Naming the encoder.
    """
    from histofuse.encoders.registry import get_spec

    for name in config["encoders"]:
        get_spec(name)
    for name in config["weights"]:
        if name not in config["encoders"]:
            raise HistofuseError(f"config `weights.{name}`: {name!r} is not in `encoders`")


def plan_feature_sets(config: dict[str, Any]) -> dict[str, list[str]]:
    """Feature set name → encoder ids: each encoder alone, then the ``concat`` groups.

    Raises:
        HistofuseError: If a group names an encoder that is not embedded, or there is none.
    """
    feature_sets: dict[str, list[str]] = {}
    if config["feature_sets"]["singles"]:
        feature_sets.update({e: [e] for e in config["encoders"]})
    for group in config["feature_sets"]["concat"]:
        unknown = [e for e in group if e not in config["encoders"]]
        if unknown:
            raise HistofuseError(
                f"config `feature_sets.concat` names {unknown}, which are not in `encoders`"
            )
        feature_sets[names.concat_name(group)] = sorted(group)
    if not feature_sets:
        raise HistofuseError("config `feature_sets` defines no feature set")
    return feature_sets


def check_tasks(config: dict[str, Any], samples: pd.DataFrame) -> None:
    """Stops when the sheet's ``tasks`` column or a task names something not configured.

    Raises:
        HistofuseError: Naming the sample or the task key.
    """
    if "tasks" in samples:
        from histofuse.samples import parse_tasks

        for sample, cell in samples["tasks"].items():
            unknown = sorted(set(parse_tasks(cell)) - set(config["tasks"]))
            if unknown:
                raise HistofuseError(
                    f"sample sheet {config['samples']}: sample {sample} names task(s) {unknown} "
                    "in its `tasks` column, which are not in the config's `tasks`"
                )
    for task, spec in config["tasks"].items():
        unknown = sorted(set(spec.get("samples") or []) - set(samples.index))
        if unknown:
            raise HistofuseError(f"config `tasks.{task}.samples` names unknown samples {unknown}")
        heads = sorted(set(spec.get("heads") or []) - set(config["heads"]))
        if heads:
            raise HistofuseError(
                f"config `tasks.{task}.heads` names {heads}, which are not in `heads`"
            )


def check_slide_only(config: dict[str, Any], samples: pd.DataFrame) -> None:
    """Stops a study without tasks whose spot tiling would need expression files it lacks.

    Raises:
        HistofuseError: Naming the first sample without an expression file and the fix.
    """
    if config["tiling"]["mode"] != "spots":
        return
    lacking = [s for s in samples.index if not samples.at[s, "expression"]]
    if lacking:
        raise HistofuseError(
            f"sample sheet {config['samples']}: sample {lacking[0]} has no expression file, and "
            "`tiling.mode: spots` centres tiles on its spots; a study without tasks tiles its "
            "slides with `tiling.mode: grid`"
        )


def plan_samples(
    config: dict[str, Any], demo: DemoLayout | None, known: dict[str, str]
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The run's sample table and its embed shards.

    The table is the sheet's (or the demo's, as its generator will write it), then the samples
    of HEST-Bench folders, which get shards of their own: their tiles come from pre-cut patches
    (another tiling spec), and the other tasks' embed jobs never wait for them.

    Args:
        config: The validated config.
        demo: The demo's layout, or None when the config does not generate it.
        known: Earlier shard assignments (see :func:`read_registry`).
    """
    from histofuse.samples import load_samples

    samples = demo_plan.samples(demo) if demo else load_samples(config["samples"])
    size = config["embed"]["shard_size"]
    shards = assign_shards(list(samples.index), size, known)
    bench = hest_bench_samples(config, demo, set(samples.index))
    if len(bench):
        taken = {**known, **{s: shard for shard, members in shards.items() for s in members}}
        shards.update(assign_shards(list(bench.index), size, taken))
        samples = pd.concat([samples, bench])
        shards = dict(sorted(shards.items()))
    return samples, shards


@dataclass
class Plan:
    """The jobs of a workflow run.

    Attributes:
        config: The validated config with defaults.
        samples: The sample table, indexed by ``sample_id``.
        shards: Shard id (``0000``) → sample ids, in sheet order.
        feature_sets: Feature set name → encoder ids.
        demo: The demo cohort's layout when the config generates it, else None.
    """

    config: dict[str, Any]
    samples: pd.DataFrame
    shards: dict[str, list[str]]
    feature_sets: dict[str, list[str]]
    demo: DemoLayout | None = None
    # Input functions ask the same questions once per job (1,000 embed jobs at 10k × 10); the
    # answers depend only on the plan, so they are computed once.
    _memo: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_config(cls, config: dict[str, Any], registry: str | Path | None = None) -> Plan:
        """Builds the plan from a validated config.

        Args:
            config: The validated config.
            registry: The shard registry (``results/shards.tsv``) recording earlier assignments;
                absent or None on a first run.

        Raises:
            HistofuseError: For unknown encoders, feature sets naming encoders that are not
                embedded, tasks naming unknown samples, or a missing sheet.
        """
        check_encoders(config)
        check_heads(config)
        demo = demo_plan.layout(config)
        samples, shards = plan_samples(config, demo, read_registry(registry))
        feature_sets = plan_feature_sets(config)
        check_tasks(config, samples)
        plan = cls(config, samples, shards, feature_sets, demo)
        check_splits(plan)  # a split the sheet cannot fill stops here, not after embedding
        if plan.slide_only:
            check_slide_only(config, samples)
        return plan

    def save_registry(self, path: str | Path) -> None:
        """Writes the shard assignment (atomically) so later runs keep it."""
        from histofuse.atomic import write_text

        rows = [f"{s}\t{shard}" for shard, members in self.shards.items() for s in members]
        old = read_registry(path)
        rows += [f"{s}\t{shard}" for s, shard in old.items() if s not in self.samples.index]
        write_text("sample_id\tshard\n" + "\n".join(rows) + "\n", path)

    def task_samples(self, task: str) -> list[str]:
        """Sample ids of a task (computed once per task)."""
        key = ("task_samples", task)
        if key not in self._memo:
            self._memo[key] = self._task_samples(task)
        return list(self._memo[key])

    def _task_samples(self, task: str) -> list[str]:
        spec = self.config["tasks"][task]
        if spec.get("hest_bench"):
            return [s for s in self.samples.index if self.samples.at[s, "task"] == task]
        chosen = spec.get("samples")
        if chosen:
            return list(chosen)
        if "expression" not in self.samples:
            return []
        from histofuse.samples import joins_task

        bench = self.samples.get("patches")
        return [
            s
            for s in self.samples.index
            if joins_task(self.samples, s, task)
            and (bench is None or not isinstance(bench[s], str) or not bench[s])
        ]

    def shards_of(self, samples: list[str]) -> list[str]:
        """Shard ids holding any of the given samples, in shard order."""
        if ("shard_of",) not in self._memo:
            self._memo[("shard_of",)] = {
                s: shard for shard, members in self.shards.items() for s in members
            }
        shard_of = self._memo[("shard_of",)]
        wanted = {shard_of[s] for s in samples if s in shard_of}
        return [s for s in self.shards if s in wanted]

    def task_shards(self, task: str) -> list[str]:
        """Shard ids holding any sample of a task (computed once per task)."""
        key = ("task_shards", task)
        if key not in self._memo:
            self._memo[key] = self.shards_of(self.task_samples(task))
        return list(self._memo[key])

    @cached_property
    def tiling_spec(self) -> TilingSpec:
        """The configured tiling geometry (validated once; not its run policy keys)."""
        from histofuse.slides.spec import TilingSpec

        return TilingSpec.from_config(self.config["tiling"])

    @property
    def tiling_key(self) -> str:
        """The ``tiling`` settings that decide what the tile jobs write, as JSON.

        The geometry (:attr:`tiling_spec`) and the checks that decide whether a sample is cut
        at all (``min_spots_on_tissue``, ``mpp_range``, ``max_upsample``,
        ``mpp_disagreement``); not the run policy (:data:`TILING_POLICY`). Put in the tile
        rules' ``params``, a policy change reruns no tile job, and so no embed job.
        """
        tiling = self.config["tiling"]
        return as_json({k: v for k, v in tiling.items() if k not in TILING_POLICY})

    @property
    def tiling_fingerprint(self) -> str:
        """The fingerprint of :attr:`tiling_spec`."""
        return self.tiling_spec.fingerprint()

    def weights_sha256(self, encoder: str) -> str | None:
        """The sha256 of an encoder's configured weights file; None for no file (registry, hub).

        Kept per file version (:func:`histofuse.digests.cached_sha256`), so a multi-GB file is
        read once, and again only when it is rewritten.

        Raises:
            HistofuseError: If the file is missing or cannot be read.
        """
        from histofuse.digests import cached_sha256

        source = self.config["weights"].get(encoder)
        if not source or source.startswith("hf-hub:"):
            return None
        key = ("weights_sha256", encoder)
        if key not in self._memo:
            try:
                self._memo[key] = cached_sha256(source)
            except OSError as err:
                raise HistofuseError(
                    f"config `weights.{encoder}`: cannot read {source} ({err.strerror or err}); "
                    "check the path (relative paths start at the workflow's folder)"
                ) from None
        return self._memo[key]

    def embed_key(self, encoder: str) -> str:
        """The cache key known at parse time (spec, weights and their content, tiling, dtype).

        Put in the embed rule's ``params`` as JSON, it reruns exactly the stores whose encoder
        spec, pooling, weights, tiling or dtype changed. The weights file enters by its content
        (:meth:`weights_sha256`), not its mtime: a file replaced by an older one is seen too.
        """
        from histofuse.encoders.registry import get_spec

        key = ("embed_key", encoder)
        if key not in self._memo:
            doc = {
                "encoder": get_spec(encoder).fingerprint(),
                "weights": self.config["weights"].get(encoder, "default"),
                "tiling": self.tiling_fingerprint,
                "dtype": self.config["embed"]["dtype"],
            }
            digest = self.weights_sha256(encoder)
            self._memo[key] = as_json(doc if digest is None else {**doc, "weights_sha256": digest})
        return self._memo[key]

    def cache_keys(self, task: str, features: str) -> str:
        """The key parts each store of a job must carry, as its ``--cache-keys`` JSON.

        One entry per encoder the ``fit``, ``peka`` or ``bulk-fit`` job reads, as
        :func:`histofuse.cache.expected_key` gives it. Tiles of a HEST-Bench task are pre-cut
        patches, keyed by their size and µm/px alone (:func:`histofuse.slides.patches.patch_spec`);
        every other task's, by the ``tiling`` section. A feature set of slide embeddings reads no
        store: ``{}``.
        """
        from histofuse.cache import expected_key
        from histofuse.encoders.registry import get_spec
        from histofuse.slides.patches import patch_spec

        key = ("cache_keys", task, features)
        if key not in self._memo:
            encoders = self.feature_sets.get(features)
            if encoders is None:
                encoders = [self.peka.sets[features]] if features in self.peka.sets else []
            spec = self.tiling_spec
            if (self.config["tasks"].get(task) or {}).get("hest_bench"):
                spec = patch_spec(spec)
            dtype, weights = self.config["embed"]["dtype"], self.config["weights"]
            keys = {
                e: expected_key(
                    get_spec(e), weights.get(e), spec.fingerprint(), dtype, self.weights_sha256(e)
                )
                for e in encoders
            }
            self._memo[key] = as_json(keys)
        return self._memo[key]

    @property
    def fit_features_pattern(self) -> str:
        """The ``fit`` rule's ``features`` wildcard: its feature sets' names, nothing else."""
        return "|".join(map(re.escape, self.feature_sets)) or "(?!)"

    def feature_manifests(self, task: str, features: str) -> list[str]:
        """The manifests of the stores a fit job reads: every encoder × the task's shards."""
        shards = self.task_shards(task)
        return [paths.features_manifest(e, s) for e in self.feature_sets[features] for s in shards]

    def feature_stores(self, task: str, features: str) -> list[str]:
        """The stores of :meth:`feature_manifests`."""
        return [paths.store_of(m) for m in self.feature_manifests(task, features)]

    def bench_files(self, task: str) -> list[str]:
        """The files a task's HEST-Bench folder gives its fit jobs (none for a sheet task).

        The demo's folder may not exist yet: its generator's files are listed, so that the
        inputs are the same before and after generation.
        """
        from histofuse.hest_bench import bench_files

        folder = self.config["tasks"][task].get("hest_bench")
        if not folder:
            return []
        if demo_plan.writes_bench(self.demo, folder):
            return demo_plan.bench_fit_files(self.demo)
        return bench_files(folder)

    def fit_jobs(self) -> list[tuple[str, str, str]]:
        """(task, features, head) of every ``fit`` job.

        A task fits its ``heads`` (all heads by default); fusion heads only on feature sets of
        two or more encoders.
        """
        from histofuse.heads.names import FUSION_HEADS

        heads = self.config["heads"]
        return [
            (task, features, head)
            for task, spec in self.config["tasks"].items()
            for features, encoders in self.feature_sets.items()
            for head in heads
            if head not in FUSION_HEADS or len(encoders) > 1
            if head in (spec.get("heads") or heads)
        ]

    @cached_property
    def peka(self) -> PekaPlan:
        """The PEKA jobs (checked when first asked for)."""
        from histofuse.plan.peka import PekaPlan

        return PekaPlan(self)

    @cached_property
    def bulk(self) -> BulkPlan:
        """The slide-level bulk jobs (checked when first asked for)."""
        from histofuse.plan.bulk import BulkPlan

        return BulkPlan(self)

    def spot_jobs(self) -> list[tuple[str, str, str]]:
        """(task, features, head) of every spot-level job: ``fit``, then ``peka``."""
        return self.fit_jobs() + self.peka.jobs()

    def metrics_files(self) -> list[str]:
        """Every metrics file the report reads: spot-level jobs, then bulk jobs."""
        return [paths.metrics(*job) for job in self.spot_jobs()] + self.bulk.metrics_files()

    def prediction_files(self) -> list[str]:
        """The predictions files beside :meth:`metrics_files`, in the same order."""
        spots = [paths.predictions(*job) for job in self.spot_jobs()]
        return spots + self.bulk.prediction_files()

    @property
    def slide_only(self) -> bool:
        """Whether the study fits nothing (no task, no bulk task): it tiles and embeds only.

        Read from the config, so that asking does not check the bulk and PEKA parts early.
        """
        return not self.config["tasks"] and not self.config["bulk"]

    def all_feature_manifests(self) -> list[str]:
        """The manifests of every encoder's store of every shard (a slide-only study's features)."""
        return [paths.features_manifest(e, s) for e in self.config["encoders"] for s in self.shards]

    def tile_stats(self) -> tuple[list[str], list[str]]:
        """The tile jobs' outputs the slides page waits for, and the stats files it reads.

        Per-sample jobs declare each stats file (``results/tiles/{sample}.json``); a shard job
        declares its folder, which holds its samples' stats files.
        """
        if self.config["tiling"]["jobs"] == "sample":
            stats = [paths.TILES_STATS.format(sample=s) for s in self.samples.index]
            return stats, stats
        folders = [paths.SHARD_TILES.format(shard=shard) for shard in self.shards]
        stats = [f"{folders[i]}/{s}.json" for i, m in enumerate(self.shards.values()) for s in m]
        return folders, stats

    def qc_thumbnails(self) -> list[str]:
        """Tiling QC thumbnails for the report (made only by per-sample tiling jobs)."""
        if self.config["tiling"]["jobs"] != "sample":
            return []
        return [paths.tiles_qc(s) for s in self.samples.index]

    def design_files(self) -> list[str]:
        """What the report's data-and-design tables read besides the metrics files.

        The sample sheet (patients), the manifest of every feature store a fit job reads (the
        store's provenance lies beside it), and the tile stats: one JSON per sample tiled on
        its own, else each shard's tiles folder (which holds them).
        """
        manifests = dict.fromkeys(
            m
            for task, features, _ in self.fit_jobs()
            for m in self.feature_manifests(task, features)
        )
        if self.config["tiling"]["jobs"] == "sample":
            tiles = [paths.TILES_STATS.format(sample=s) for s in self.samples.index]
        else:
            tiles = [paths.SHARD_TILES.format(shard=s) for s in self.shards]
        sheet = [self.config["samples"]] if self.config.get("samples") else []
        return [*sheet, *manifests, *tiles]

    def task_json(self, task: str) -> str:
        """A task's settings, the ``--task-json`` of its jobs."""
        return as_json(self.config["tasks"][task])

    def head_json(self, head: str) -> str:
        """A head's settings, the ``--head-params`` of its spot-level jobs."""
        return as_json(self.config["heads"][head] or {})

    def section_json(self, name: str) -> str:
        """A config section (``report``, ``peka``) as one JSON argument."""
        return as_json(self.config[name])

    @property
    def memory_flag(self) -> str:
        """``--memory-budget-mb N`` when ``fit.memory_budget_mb`` is set (features are streamed)."""
        budget = self.config["fit"]["memory_budget_mb"]
        return "" if budget is None else f"--memory-budget-mb {budget}"

    def demo_outputs(self) -> demo_plan.DemoFiles | None:
        """The demo generator's files besides the sheet (None when the demo is off)."""
        return demo_plan.outputs(self.demo) if self.demo else None

    @property
    def demo_flags(self) -> str:
        """The demo generator's HEST-Bench flags."""
        return demo_plan.hest_bench_flags(self.config)


def as_json(doc: Any) -> str:
    """A settings document as the one JSON argument of a CLI verb (keys sorted: stable params)."""
    return json.dumps(doc, sort_keys=True)
