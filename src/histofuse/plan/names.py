"""Feature-set names: the one place their grammar is written and parsed.

A feature set is what a head is fitted on; its name is the ``features`` column of the report and
a folder of ``results/metrics/{task}/{features}/``:

* ``<enc>`` — one encoder's cached features;
* ``<enc>+<enc>[+…]`` — several encoders' features concatenated (ids sorted);
* ``<mode>:<enc>`` — a PEKA feature set: ``peka`` (Bone on the cached features), ``peka-tail``
  (Bone on the last blocks, cached tokens), ``image+peka`` (features and student concatenated),
  ``lora`` / ``adalora`` / ``hra`` (PEFT baselines);
* ``teacher`` — PEKA's transcriptomic teacher embedding itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from histofuse.errors import HistofuseError

#: PEKA modes written ``<mode>:<encoder>``.
PEKA_MODES = ("peka", "peka-tail", "image+peka", "lora", "adalora", "hra")
#: The teacher feature set (no encoder).
TEACHER = "teacher"
#: PEKA modes that adapt the encoder's last blocks (read the token cache).
TAIL_MODES = ("peka-tail",)
#: PEFT baselines, run on the site ``peka.baseline_site`` names.
BASELINE_MODES = ("lora", "adalora", "hra")
#: Allowed characters of an encoder id.
ENCODER_ID = r"[A-Za-z0-9._-]+"
#: Names of PEKA feature sets (the ``peka`` rule's wildcard).
PEKA_PATTERN = rf"{TEACHER}|(?:{'|'.join(map(re.escape, PEKA_MODES))}):{ENCODER_ID}"


@dataclass(frozen=True)
class FeatureSet:
    """A parsed feature-set name.

    Attributes:
        name: The name as written.
        encoders: Encoder ids whose caches it reads, sorted (empty for ``teacher``).
        mode: ``None`` for cached features, else ``teacher`` or the PEKA mode.
    """

    name: str
    encoders: tuple[str, ...]
    mode: str | None = None

    @property
    def is_peka(self) -> bool:
        """Whether the ``peka`` rule makes it (a PEKA mode or the teacher)."""
        return self.mode is not None

    @property
    def encoder(self) -> str | None:
        """The one encoder of a PEKA feature set (``None`` for ``teacher``)."""
        return self.encoders[0] if self.encoders else None


def concat_name(encoders: Iterable[str]) -> str:
    """Names a feature set of cached features: an encoder id, or sorted ids joined by ``+``."""
    return "+".join(sorted(encoders))


def peka_name(mode: str, encoder: str | None = None) -> str:
    """Names a PEKA feature set: ``<mode>:<encoder>``, or ``teacher``."""
    return TEACHER if mode == TEACHER else f"{mode}:{encoder}"


def parse(name: str) -> FeatureSet:
    """Parses a feature-set name (see the module docstring).

    Raises:
        HistofuseError: For a malformed name or an unknown PEKA mode.
    """
    if name == TEACHER:
        return FeatureSet(name, (), TEACHER)
    if ":" in name:
        mode, _, encoder = name.partition(":")
        if mode not in PEKA_MODES or not re.fullmatch(ENCODER_ID, encoder):
            raise HistofuseError(
                f"feature set {name!r} is not `<mode>:<encoder>` with mode one of "
                f"{', '.join(PEKA_MODES)}, or `{TEACHER}`"
            )
        return FeatureSet(name, (encoder,), mode)
    encoders = name.split("+")
    if not all(re.fullmatch(ENCODER_ID, e) for e in encoders):
        raise HistofuseError(
            f"feature set {name!r} is not an encoder id or encoder ids joined by `+`"
        )
    return FeatureSet(name, tuple(sorted(encoders)))


def is_peka(name: str) -> bool:
    """Whether a feature-set name belongs to the ``peka`` rule."""
    return re.fullmatch(PEKA_PATTERN, name) is not None
