"""The embed stage: run one encoder once over every tile of a shard and cache pooled features.

The encoder run itself (device and GPU slot, failed samples, streaming, the store and its
provenance) is :func:`histofuse.encoders.run.run_encoder`; this module says what the embed stage
computes per batch (the encoder's pooled features) and how its stores are keyed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histofuse.encoders.run import Forward, embed_settings, run_encoder


def cache_key(
    spec_fingerprint: str, weights_sha256: str, tiling_fingerprint: str, dtype: str
) -> str:
    """Returns the cache key of a feature store: what must match for features to be reused."""
    blob = json.dumps([spec_fingerprint, weights_sha256, tiling_fingerprint, dtype]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Features:
    """The embed stage's output: one pooled feature vector (``embed_dim``) per tile.

    Attributes:
        dtype: Feature dtype on disk (``embed.dtype``).
        compile: Wrap the model in ``torch.compile``.
    """

    dtype: str
    compile: bool = False
    label = "embed"

    def cache_key(self, model: Any, tiling_fingerprint: str) -> str:
        """The feature store's cache key (:func:`cache_key`)."""
        return cache_key(
            model.spec.fingerprint(), model.weights_sha256, tiling_fingerprint, self.dtype
        )

    @contextmanager
    def forward(self, model: Any) -> Iterator[Forward]:
        """The encoder's own forward, in the spec's mixed precision on CUDA."""
        import torch

        if model.spec.pooling == "avg":  # CNN trunks run faster in NHWC
            model = model.to(memory_format=torch.channels_last)
        fn = torch.compile(model) if self.compile else model
        yield Forward(fn, model.spec.embed_dim, autocast=True)


def embed_shard(
    tiles: Sequence[str | Path],
    encoder: str,
    out: str | Path,
    weights: str | Path | None = None,
    compile: bool = False,
    prefetch_factor: int = 4,
    **embed: Any,
) -> dict[str, Any]:
    """Embeds every tile of the given tiles tables with one encoder into one feature store.

    Samples the tile step recorded as failed get no features; their reasons are kept in the
    store's provenance (``failed_samples``). ``device`` ``auto`` or ``cuda`` (no index) holds one
    GPU exclusively for the whole job (:func:`histofuse.devices.claim_device`).

    Args:
        tiles: Tiles tables (``results/tiles/{sample}.parquet``), one per sample, or folders of
            them.
        encoder: Registry id of the encoder.
        out: The store path (``….zarr``); its manifest is written beside it last.
        weights: A weights file or hub id overriding the spec's default.
        compile: Wrap the model in ``torch.compile``.
        prefetch_factor: Batches each worker reads ahead of the forward pass.
        **embed: Keys of the ``embed`` config section (``batch_size``, ``num_workers``,
            ``device``, ``dtype``); a key left out takes the schema's default.

    Returns:
        The store's provenance.
    """
    settings = embed_settings(**embed)
    output = Features(settings.dtype, compile=compile)
    return run_encoder(output, tiles, encoder, out, weights, settings, prefetch_factor)
