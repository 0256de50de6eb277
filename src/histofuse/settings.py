"""Typed settings: one frozen dataclass per config section, built from the validated config.

Defaults live in one place only, the config schema (``histofuse/schemas/config.schema.yaml``):
:func:`section` validates a section's document against its part of the schema and fills the
defaults in, and :func:`build` turns the filled document into the section's dataclass. Stages and
CLI verbs take these objects (a verb reads a section as one JSON document, inline or from a file,
see :func:`load_document`), so no default is re-declared in Python or argparse.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from histofuse.errors import HistofuseError

T = TypeVar("T")

#: Config sections whose value maps names to documents of one shape (``tasks.<name>``).
_NAMED = ("tasks", "bulk")


@functools.cache
def _schema() -> dict[str, Any]:
    from histofuse.config import load_schema

    return load_schema()


def section_schema(name: str) -> dict[str, Any]:
    """The schema of one config section (of one entry, for ``tasks`` and ``bulk``).

    Raises:
        HistofuseError: If the config has no such section.
    """
    props = _schema()["properties"]
    if name not in props:
        raise HistofuseError(f"no config section {name!r}; sections: {', '.join(sorted(props))}")
    sub = props[name]
    return sub["additionalProperties"] if name in _NAMED else sub


def section(name: str, doc: Mapping[str, Any] | None, label: str | None = None) -> dict[str, Any]:
    """Validates a section's document and returns a copy with the schema's defaults filled in.

    Args:
        name: Section (``tasks``, ``bulk``, ``peka``, ``embed``, ``tiling``, ``fit``, …); for
            ``tasks`` and ``bulk`` the document is one entry.
        doc: The section's document (``None`` = empty: all defaults).
        label: Config key named in messages (default: ``name``).

    Raises:
        HistofuseError: Naming the offending key.
    """
    from histofuse.config import validate_config

    label = label or name
    wrapped = {"properties": {label: section_schema(name)}, "type": "object"}
    return validate_config({label: dict(doc or {})}, wrapped)[label]


def load_document(text_or_path: str | Path) -> dict[str, Any]:
    """A section's document from a command line: inline JSON, or a ``.json``/``.yaml`` file.

    Raises:
        HistofuseError: If it is neither valid JSON nor a readable file.
    """
    text = str(text_or_path).strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise HistofuseError(f"settings {text[:60]!r} are not valid JSON: {exc}") from None
    path = Path(text)
    if not path.is_file():
        raise HistofuseError(f"settings file {path} does not exist (give JSON or a file path)")
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise HistofuseError(f"settings file {path} is not valid JSON or YAML: {reason}") from None
    if not isinstance(doc, dict):
        raise HistofuseError(f"settings file {path} must hold a mapping of keys")
    return doc


def build(cls: type[T], doc: Mapping[str, Any]) -> T:
    """Builds a settings dataclass from a filled document (nested dataclasses recursively).

    Keys of ``doc`` that ``cls`` has no field for are ignored (the schema already rejected
    unknown keys); lists become tuples so the settings are immutable.
    """
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _value(hints[f.name], doc.get(f.name))
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init
    }
    return cls(**kwargs)


def _value(hint: Any, value: Any) -> Any:
    for tp in typing.get_args(hint) if _is_union(hint) else (hint,):
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            return build(tp, value)  # type: ignore[arg-type]
    return _freeze(value)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def to_dict(settings: Any) -> dict[str, Any]:
    """Settings as plain JSON-ready data (tuples as lists), e.g. for provenance."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def load(cls: type[T], name: str, doc: Mapping[str, Any] | None, label: str | None = None) -> T:
    """:func:`section` then :func:`build`: the typed settings of one section's document."""
    return build(cls, section(name, doc, label))


@dataclass(frozen=True)
class Genes:
    """Target genes: a fixed ``list``, else the ``top_k`` most variable, chosen on ``select_on``."""

    top_k: int
    list: tuple[str, ...] | None
    select_on: str


@dataclass(frozen=True)
class Split:
    """Spot-task splits (``tasks.<name>.split``)."""

    scheme: str
    n_folds: int
    n_repeats: int
    block_um: float
    dir: str | None


@dataclass(frozen=True)
class Task:
    """A spot-level expression task (``tasks.<name>``)."""

    samples: tuple[str, ...] | None
    hest_bench: str | None
    heads: tuple[str, ...] | None
    genes: Genes
    transform: str
    split: Split
    seed: int
    seeds: tuple[int, ...] | None
    integer_counts: bool

    @property
    def seed_list(self) -> list[int]:
        """The split seeds: ``seeds``, else ``[seed]``."""
        return [int(s) for s in (self.seeds or (self.seed,))]


@dataclass(frozen=True)
class BulkSplit:
    """Case-level splits of a bulk task (``bulk.<name>.split``)."""

    scheme: str
    n_folds: int
    n_repeats: int
    scoring: str


@dataclass(frozen=True)
class BulkTask:
    """A slide-level bulk expression task (``bulk.<name>``)."""

    table: str | None
    id_column: str | None
    samples: tuple[str, ...] | None
    genes: Genes
    transform: str
    split: BulkSplit
    seed: int
    memory_mb: float
    aggregations: tuple[str, ...]
    feature_sets: tuple[str, ...] | None
    slide_embeddings: Mapping[str, Any]
    heads: Mapping[str, Any]
    abmil: Mapping[str, Any]


@dataclass(frozen=True)
class Teacher:
    """PEKA's transcriptomic teacher (``peka.teacher``)."""

    source: str
    dim: int
    path: str | None
    key: str | None


@dataclass(frozen=True)
class Classifier:
    """PEKA's frozen teacher classifier (``peka.classifier``)."""

    hidden: int
    epochs: int
    lr: float
    batch_size: int


@dataclass(frozen=True)
class StudentTraining:
    """PEKA student training (``peka.train``)."""

    epochs: int
    batch_size: int
    lr: float
    step_size: int
    gamma: float
    clip: float
    alpha: float
    temperature: float
    structure_weight: float


@dataclass(frozen=True)
class Peka:
    """PEKA adapters (``peka``)."""

    encoders: tuple[str, ...]
    tasks: tuple[str, ...]
    modes: tuple[str, ...]
    heads: tuple[str, ...]
    teacher: Teacher
    clusters: int
    classifier: Classifier
    r: int
    hidden: int
    tail_blocks: int
    tokens_dtype: str
    baseline_site: str
    seed: int
    train: StudentTraining


@dataclass(frozen=True)
class Embed:
    """Encoder runs (``embed``)."""

    batch_size: int
    num_workers: int
    threads: int
    device: str
    dtype: str
    gpu: int
    shard_size: int


@dataclass(frozen=True)
class Fit:
    """How fit jobs hold a task's features (``fit``)."""

    memory_budget_mb: float | None
