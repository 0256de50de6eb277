"""What the workflow will run, computed once at Snakemake parse time.

Everything here is cheap (no torch, no slides opened, no globbing): the sample table is read once,
samples are assigned to embed shards by their order in the sheet, and feature sets are named.
Rules in ``workflow/rules/*.smk`` only look things up in the :class:`Plan`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from histofuse.errors import HistofuseError


def feature_set_name(encoders: list[str]) -> str:
    """Names a feature set: an encoder id, or sorted ids joined by ``+`` for a concatenation."""
    return "+".join(sorted(encoders))


def demo_samples(sheet: str | Path, demo: dict[str, Any]) -> pd.DataFrame:
    """The sample table the demo generator will write, known before it runs."""
    from histofuse.demo import demo_sample_ids

    base = Path(sheet).parent
    ids = demo_sample_ids(demo["patients"], demo["slides_per_patient"])
    return pd.DataFrame(
        {
            "sample_id": ids,
            "patient_id": [i.split("-")[0] for i in ids],
            "slide": [str(base / "slides" / f"{i}.tiff") for i in ids],
            "expression": [str(base / "st" / f"{i}.h5ad") for i in ids],
            "mpp": [float("nan")] * len(ids),
        }
    ).set_index("sample_id", drop=False)


def hest_bench_samples(config: dict[str, Any], taken: set[str]) -> pd.DataFrame:
    """The samples of the config's ``hest_bench`` tasks, named ``{task}.{sample_id}``.

    A folder the demo generator will write (``demo.hest_bench``) is planned from the demo's
    settings; any other folder must exist.

    Raises:
        HistofuseError: If a folder is missing or malformed, a task also sets ``samples``, or a
            name collides with a sheet sample.
    """
    from histofuse.hest_bench import bench_samples, planned_bench_samples

    tables = []
    demo = config["demo"]
    for task, spec in config["tasks"].items():
        folder = spec.get("hest_bench")
        if not folder:
            continue
        if spec.get("samples"):
            raise HistofuseError(
                f"config `tasks.{task}`: `samples` and `hest_bench` exclude each other; the "
                "HEST-Bench folder's split files list the samples"
            )
        planned = Path(config["samples"]).parent / "hest-bench"
        if demo["enabled"] and demo.get("hest_bench") and Path(folder) == planned:
            from histofuse.demo import demo_hest_bench_ids

            ids = demo_hest_bench_ids(demo["patients"], demo["slides_per_patient"])
            tables.append(planned_bench_samples(task, folder, ids))
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


@dataclass
class Plan:
    """The jobs of a workflow run.

    Attributes:
        config: The validated config with defaults.
        samples: The sample table, indexed by ``sample_id``.
        shards: Shard id (``0000``) → sample ids, in sheet order.
        feature_sets: Feature set name → encoder ids.
    """

    config: dict[str, Any]
    samples: pd.DataFrame
    shards: dict[str, list[str]]
    feature_sets: dict[str, list[str]]
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
        from histofuse.encoders.registry import get_spec
        from histofuse.samples import load_samples

        for name in config["encoders"]:
            get_spec(name)
        for name in config["weights"]:
            if name not in config["encoders"]:
                raise HistofuseError(f"config `weights.{name}`: {name!r} is not in `encoders`")
        sheet = config["samples"]
        if config["demo"]["enabled"]:
            samples = demo_samples(sheet, config["demo"])
        else:
            samples = load_samples(sheet)
        ids = list(samples.index)
        known = read_registry(registry)
        shards = assign_shards(ids, config["embed"]["shard_size"], known)
        bench = hest_bench_samples(config, set(ids))
        if len(bench):
            # HEST-Bench samples get shards of their own: their tiles come from pre-cut patches
            # (another tiling spec), and the other tasks' embed jobs never wait for them.
            taken = {**known, **{s: shard for shard, members in shards.items() for s in members}}
            shards.update(assign_shards(list(bench.index), config["embed"]["shard_size"], taken))
            samples = pd.concat([samples, bench])
            ids = list(samples.index)
            shards = dict(sorted(shards.items()))

        feature_sets: dict[str, list[str]] = {}
        if config["feature_sets"]["singles"]:
            feature_sets.update({e: [e] for e in config["encoders"]})
        for group in config["feature_sets"]["concat"]:
            unknown = [e for e in group if e not in config["encoders"]]
            if unknown:
                raise HistofuseError(
                    f"config `feature_sets.concat` names {unknown}, which are not in `encoders`"
                )
            feature_sets[feature_set_name(group)] = sorted(group)
        if not feature_sets:
            raise HistofuseError("config `feature_sets` defines no feature set")
        if "tasks" in samples:
            from histofuse.samples import parse_tasks

            for sample, cell in samples["tasks"].items():
                unknown = sorted(set(parse_tasks(cell)) - set(config["tasks"]))
                if unknown:
                    raise HistofuseError(
                        f"sample sheet {sheet}: sample {sample} names task(s) {unknown} in its "
                        f"`tasks` column, which are not in the config's `tasks`"
                    )
        for task, spec in config["tasks"].items():
            unknown = sorted(set(spec.get("samples") or []) - set(ids))
            if unknown:
                raise HistofuseError(
                    f"config `tasks.{task}.samples` names unknown samples {unknown}"
                )
            heads = sorted(set(spec.get("heads") or []) - set(config["heads"]))
            if heads:
                raise HistofuseError(
                    f"config `tasks.{task}.heads` names {heads}, which are not in `heads`"
                )
        return cls(config=config, samples=samples, shards=shards, feature_sets=feature_sets)

    def save_registry(self, path: str | Path) -> None:
        """Writes the shard assignment (atomically) so later runs keep it."""
        import os

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [f"{s}\t{shard}" for shard, members in self.shards.items() for s in members]
        old = read_registry(path)
        rows += [f"{s}\t{shard}" for s, shard in old.items() if s not in self.samples.index]
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("sample_id\tshard\n" + "\n".join(rows) + "\n")
        os.replace(tmp, path)

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

    def embed_key(self, encoder: str) -> str:
        """The cache key known at parse time (spec, weights source, tiling, dtype) as JSON.

        Put in the embed rule's ``params``, it reruns exactly the stores whose encoder spec,
        pooling, weights, tiling or dtype changed; the weights file's content is tracked by its
        being an input of the rule.
        """
        from histofuse.encoders.registry import get_spec

        key = ("embed_key", encoder)
        if key not in self._memo:
            self._memo[key] = json.dumps(
                {
                    "encoder": get_spec(encoder).fingerprint(),
                    "weights": self.config["weights"].get(encoder, "default"),
                    "tiling": self.config["tiling"],
                    "dtype": self.config["embed"]["dtype"],
                },
                sort_keys=True,
            )
        return self._memo[key]
