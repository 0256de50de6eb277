"""The token cache of tail mode: the token sequence entering the last ``k`` blocks of a ViT.

``results/tokens/{encoder}/{shard}.zarr`` is a feature store (:mod:`histofuse.cache`:
atomic, manifest written last, provenance) whose rows are the tokens of one tile flattened to
``T · D`` values (float16 by default); ``provenance["tokens"]`` records ``n_tokens``, ``dim``,
``blocks`` (k), ``start_block`` and ``bytes_per_tile``. Training in ``peka-tail`` mode reads only
this cache and the encoder's weights: no slide is opened.

The encoder run (device and GPU slot, failed samples, streaming, the store and its provenance) is
:func:`histofuse.encoders.run.run_encoder`, shared with the embed stage; :class:`Tokens` says what
is computed per batch and how the store is keyed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histofuse.encoders.run import Forward, embed_settings, run_encoder
from histofuse.errors import HistofuseError


class _Enough(Exception):
    """Raised by the capture hook: the blocks after the cached point need not run."""


def tokens_key(spec_fingerprint: str, weights_sha256: str, tiling: str, k: int, dtype: str) -> str:
    """The cache key of a token store."""
    blob = json.dumps(["tokens", spec_fingerprint, weights_sha256, tiling, k, dtype]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Tokens:
    """The token cache's output: per tile, the tokens entering block ``L - blocks``, flattened.

    The tokens are taken at full precision (no autocast) and the blocks after the cached point
    never run.

    Attributes:
        blocks: k, the number of final blocks that tail mode adapts (``peka.tail_blocks``).
        dtype: Token dtype on disk (``peka.tokens_dtype``).
    """

    blocks: int
    dtype: str
    label = "tokens"

    def cache_key(self, model: Any, tiling_fingerprint: str) -> str:
        """The token store's cache key (:func:`tokens_key`)."""
        return tokens_key(
            model.spec.fingerprint(),
            model.weights_sha256,
            tiling_fingerprint,
            self.blocks,
            self.dtype,
        )

    @contextlib.contextmanager
    def forward(self, model: Any) -> Iterator[Forward]:
        """Captures the input of block ``L - blocks`` with a hook, removed when the run ends.

        Raises:
            HistofuseError: If the encoder is not a ViT with enough blocks.
        """
        import torch

        from histofuse.peka.adapters import check_vit

        check_vit(model, self.blocks)
        start = len(model.trunk.blocks) - self.blocks
        captured: list[torch.Tensor] = []

        def hook(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
            captured.append(args[0].detach().float().cpu())
            raise _Enough

        def tokens(x: torch.Tensor) -> torch.Tensor:
            captured.clear()
            with contextlib.suppress(_Enough):
                model(x)
            return captured[0]

        def rows(x: torch.Tensor) -> torch.Tensor:
            return tokens(x).flatten(1)

        handle = model.trunk.blocks[start].register_forward_pre_hook(hook)
        try:
            # One blank tile gives the shape of every tile's tokens.
            size = model.spec.input_size
            blank = torch.zeros((1, size, size, 3), dtype=torch.uint8, device=model.mean.device)
            with torch.inference_mode():
                n_tokens, dim = (int(n) for n in tokens(blank).shape[1:])
            info = {
                "blocks": self.blocks,
                "start_block": start,
                "n_tokens": n_tokens,
                "dim": dim,
                "bytes_per_tile": n_tokens * dim * np.dtype(self.dtype).itemsize,
            }
            yield Forward(rows, n_tokens * dim, autocast=False, provenance={"tokens": info})
        finally:
            handle.remove()


def embed_tokens(
    tiles: Sequence[str | Path],
    encoder: str,
    out: str | Path,
    blocks: int,
    weights: str | Path | None = None,
    dtype: str = "float16",
    **embed: Any,
) -> dict[str, Any]:
    """Caches, for every tile, the tokens entering the last ``blocks`` blocks of a ViT encoder.

    Samples the tile step recorded as failed get no tokens; their reasons are kept in the
    store's provenance (``failed_samples``). ``device`` ``auto`` or ``cuda`` (no index) holds one
    GPU exclusively for the whole job (:func:`histofuse.devices.claim_device`).

    Args:
        tiles: Tiles tables (one per sample) or folders of them.
        encoder: Registry id of a ViT encoder.
        out: Store path (``….zarr``); its manifest is written last.
        blocks: k, the number of final blocks that tail mode adapts.
        weights: Weights file overriding the spec's default.
        dtype: Token dtype on disk.
        **embed: Keys of the ``embed`` config section (``batch_size``, ``num_workers``,
            ``device``; its ``dtype`` is that of features, not tokens); a key left out takes the
            schema's default.

    Returns:
        The store's provenance.

    Raises:
        HistofuseError: If the encoder is not a ViT with enough blocks.
    """
    settings = embed_settings(**embed)
    return run_encoder(Tokens(blocks, dtype), tiles, encoder, out, weights, settings)


def read_tokens(
    stores: Sequence[str | Path], samples: list[str]
) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """Reads the cached tokens of the given samples.

    Returns:
        Tokens (N, T, D) as float32, the index (``sample, barcode, x, y``) and the
        ``tokens`` provenance entry.

    Raises:
        HistofuseError: If the stores are not token stores.
    """
    from histofuse.cache import open_features

    table = open_features(list(stores))
    info = table.provenance.get("tokens")
    if not info:
        raise HistofuseError(f"{stores[0]} is not a token store (no `tokens` provenance)")
    keep = table.index["sample"].isin(samples).to_numpy()
    flat = np.asarray(table.features[np.flatnonzero(keep)].compute(), dtype=np.float32)
    tokens = flat.reshape(len(flat), info["n_tokens"], info["dim"])
    return tokens, table.index[keep].reset_index(drop=True), dict(info)
