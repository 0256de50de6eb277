"""What the workflow will run, computed once at Snakemake parse time.

Everything here is cheap (no torch, no slides opened, no globbing): the sample table is read once,
samples are assigned to embed shards by their order in the sheet, and feature sets are named.
Rules in ``workflow/rules/*.smk`` only look things up in the :class:`Plan`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Plan:
        """Builds the plan from a validated config.

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
        size = config["embed"]["shard_size"]
        ids = list(samples.index)
        shards = {f"{i // size:04d}": ids[i : i + size] for i in range(0, len(ids), size)}

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
        for task, spec in config["tasks"].items():
            unknown = sorted(set(spec.get("samples") or []) - set(ids))
            if unknown:
                raise HistofuseError(
                    f"config `tasks.{task}.samples` names unknown samples {unknown}"
                )
        return cls(config=config, samples=samples, shards=shards, feature_sets=feature_sets)

    def task_samples(self, task: str) -> list[str]:
        """Sample ids of a task."""
        chosen = self.config["tasks"][task].get("samples")
        if chosen:
            return list(chosen)
        expr = self.samples.get("expression")
        return [s for s in self.samples.index if expr is not None and str(expr[s] or "")]

    def shards_of(self, samples: list[str]) -> list[str]:
        """Shard ids holding any of the given samples."""
        wanted = set(samples)
        return [s for s, members in self.shards.items() if wanted & set(members)]

    def embed_key(self, encoder: str) -> str:
        """The cache key known at parse time (spec, weights source, tiling, dtype) as JSON.

        Put in the embed rule's ``params``, it reruns exactly the stores whose encoder spec,
        pooling, weights, tiling or dtype changed; the weights file's content is tracked by its
        being an input of the rule.
        """
        from histofuse.encoders.registry import get_spec

        return json.dumps(
            {
                "encoder": get_spec(encoder).fingerprint(),
                "weights": self.config["weights"].get(encoder, "default"),
                "tiling": self.config["tiling"],
                "dtype": self.config["embed"]["dtype"],
            },
            sort_keys=True,
        )
