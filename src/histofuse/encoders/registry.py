"""Encoder registry: ``@register_encoder`` + :class:`EncoderSpec` + ``create_encoder``.

A registered encoder is a small function returning an :class:`EncoderSpec`: the timm architecture
and its kwargs, how token outputs are pooled into one vector, and the input transform. The spec is
plain data: importing this module imports neither torch nor timm and never touches the network, so
Snakemake can validate encoder names at parse time for free. ``create_encoder`` (in
:mod:`histofuse.encoders.model`) is the one entry point that builds a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from histofuse.errors import HistofuseError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
HIBOU_MEAN = (0.7068, 0.5755, 0.722)
HIBOU_STD = (0.195, 0.2316, 0.1816)
KEY_MAPS = ("hf-vit",)

POOLINGS = ("cls", "mean", "cls+mean", "avg")


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that decides what an encoder outputs for a tile.

    Attributes:
        name: Registry id; pooling is part of it where tools disagree (``virchow2`` vs
            ``virchow2-cls``).
        arch: timm architecture name passed to ``timm.create_model``.
        kwargs: Extra ``timm.create_model`` keyword arguments (``num_classes=0`` is always added).
        pooling: ``cls`` (class token), ``mean`` (mean of patch tokens), ``cls+mean`` (both,
            concatenated) for token models; ``avg`` (global average pool) for CNN feature maps.
        embed_dim: Output dimension after pooling.
        input_size: Square input size in pixels the model sees.
        resize: If set, tiles are first resized to this size and then centre-cropped to
            ``input_size`` (e.g. 256 → 224); if None, tiles are resized straight to
            ``input_size``.
        interpolation: Resize interpolation (``bilinear`` or ``bicubic``), antialiased.
        mean: Per-channel normalisation mean on the [0, 1] scale.
        std: Per-channel normalisation std on the [0, 1] scale.
        precision: Recommended autocast precision on CUDA (``fp32``, ``fp16`` or ``bf16``).
        n_params: Published parameter count of what :func:`build_trunk` builds (see the
            description where the published figure refers to a larger model).
        weights: Where the published weights live (``hf-hub:<id>``, a file name, or
            ``random`` for seeded test encoders that have no weights).
        seed: Seed of the random initialisation, used only when ``weights == "random"``.
        key_map: How a published checkpoint's keys map to timm's: None (already timm keys) or
            ``hf-vit`` (Hugging Face ``ViTModel``/``Dinov2Model`` naming).
        description: One line for ``histofuse encoders``.
    """

    name: str
    arch: str
    embed_dim: int
    pooling: str = "cls"
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 224
    resize: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: str = "fp32"
    n_params: int | None = None
    weights: str = "random"
    seed: int | None = None
    key_map: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"encoder {self.name!r}: pooling must be one of {POOLINGS}")
        if self.key_map not in (None, *KEY_MAPS):
            raise ValueError(f"encoder {self.name!r}: key_map must be None or one of {KEY_MAPS}")
        if self.resize is not None and self.resize < self.input_size:
            raise ValueError(f"encoder {self.name!r}: resize must be >= input_size")

    def to_dict(self) -> dict[str, Any]:
        """Returns the spec as JSON-serialisable plain data."""
        d = dataclasses.asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def fingerprint(self) -> str:
        """Returns a short hash of everything that changes the encoder's output."""
        d = self.to_dict()
        d.pop("description")
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_REGISTRY: dict[str, Callable[[], EncoderSpec]] = {}


def register_encoder(name: str) -> Callable[[Callable[[], EncoderSpec]], Callable[[], EncoderSpec]]:
    """Registers a function returning an :class:`EncoderSpec` under ``name``.

    Args:
        name: Registry id. Registering the same id twice is an error.

    Returns:
        The decorator, which returns the function unchanged.
    """

    def decorator(fn: Callable[[], EncoderSpec]) -> Callable[[], EncoderSpec]:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return decorator


def _ensure_zoo() -> None:
    from histofuse.encoders import zoo  # noqa: F401  (registers the built-in encoders)


def list_encoders() -> list[str]:
    """Returns the sorted ids of all registered encoders."""
    _ensure_zoo()
    return sorted(_REGISTRY)


def get_spec(name: str) -> EncoderSpec:
    """Returns the spec of a registered encoder.

    Args:
        name: Registry id.

    Raises:
        HistofuseError: If ``name`` is not registered; the message lists the known ids.
    """
    _ensure_zoo()
    try:
        spec = _REGISTRY[name]()
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise HistofuseError(
            f"unknown encoder {name!r}; known encoders: {known} (see `histofuse encoders`)"
        ) from None
    if spec.name != name:
        raise ValueError(f"encoder registered as {name!r} returns a spec named {spec.name!r}")
    return spec
