"""The token cache of tail mode: the token sequence entering the last ``k`` blocks of a ViT.

``results/tokens/{encoder}/{shard}.zarr`` is a feature store (:mod:`histofuse.cache.store`:
atomic, manifest written last, provenance) whose rows are the tokens of one tile flattened to
``T · D`` values (float16 by default); ``provenance["tokens"]`` records ``n_tokens``, ``dim``,
``blocks`` (k), ``start_block`` and ``bytes_per_tile``. Training in ``peka-tail`` mode reads only
this cache and the encoder's weights: no slide is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histofuse.errors import HistofuseError

log = logging.getLogger(__name__)


class _Enough(Exception):
    """Raised by the capture hook: the blocks after the cached point need not run."""


def tokens_key(spec_fingerprint: str, weights_sha256: str, tiling: str, k: int, dtype: str) -> str:
    """The cache key of a token store."""
    blob = json.dumps(["tokens", spec_fingerprint, weights_sha256, tiling, k, dtype]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def embed_tokens(
    tiles: Sequence[str | Path],
    encoder: str,
    out: str | Path,
    blocks: int = 1,
    weights: str | Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: str = "float16",
) -> dict[str, Any]:
    """Caches, for every tile, the tokens entering the last ``blocks`` blocks of a ViT encoder.

    Args:
        tiles: Tiles tables (one per sample) or folders of them.
        encoder: Registry id of a ViT encoder.
        out: Store path (``….zarr``); its manifest is written last.
        blocks: k, the number of final blocks that tail mode adapts.
        weights: Weights file overriding the spec's default.
        batch_size: Tiles per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        dtype: Token dtype on disk.

    Returns:
        The store's provenance.

    Raises:
        HistofuseError: If the encoder is not a ViT with enough blocks.
    """
    import torch
    from torch.utils.data import DataLoader

    from histofuse.cache.store import FeatureStoreWriter
    from histofuse.encoders.model import create_encoder
    from histofuse.peka.adapters import check_vit
    from histofuse.slides.reader import open_tile_source
    from histofuse.slides.tiling import read_tiles

    t0 = time.perf_counter()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_encoder(encoder, weights=weights, device=device)
    check_vit(model, blocks)
    start = len(model.trunk.blocks) - blocks
    captured: list[torch.Tensor] = []

    def hook(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach().float().cpu())
        raise _Enough

    handle = model.trunk.blocks[start].register_forward_pre_hook(hook)
    files: list[Path] = []
    for p in map(Path, tiles):
        files.extend(sorted(p.glob("*.parquet")) if p.is_dir() else [p])
    tables = [(p, *read_tiles(p)) for p in files]
    fingerprints = sorted({meta["tiling_fingerprint"] for _, _, meta in tables})
    if len(fingerprints) > 1:
        raise HistofuseError(
            f"tiles of one shard were cut with different tiling specs ({fingerprints}); re-run "
            "the tile step for all samples"
        )
    fingerprint = fingerprints[0] if fingerprints else ""
    provenance: dict[str, Any] = {
        "cache_key": tokens_key(
            model.spec.fingerprint(), model.weights_sha256, fingerprint, blocks, dtype
        ),
        "encoder": model.spec.to_dict(),
        "weights_sha256": model.weights_sha256,
        "weights_source": str(weights) if weights is not None else model.spec.weights,
        "tiling": tables[0][2].get("tiling", {}) if tables else {},
        "tiling_fingerprint": fingerprint,
        "device": device,
    }
    shape = None
    try:
        with FeatureStoreWriter(out, provenance, dtype=dtype) as writer:
            for path, table, meta in tables:
                loader = DataLoader(open_tile_source(table, meta), batch_size=batch_size)
                parts = []
                for batch in loader:
                    captured.clear()
                    with torch.inference_mode(), contextlib.suppress(_Enough):
                        model(batch.to(device))
                    parts.append(captured[0].numpy())
                if parts:
                    tok = np.concatenate(parts)
                    shape = tok.shape[1:]
                    flat = tok.reshape(len(tok), -1)
                else:
                    flat = np.zeros((0, 1), np.float32)
                coords = np.rint(table[["x", "y"]].to_numpy()).astype(np.int64)
                barcodes = table["barcode"].to_numpy() if "barcode" in table else None
                writer.add(path.name.removesuffix(".parquet"), flat, coords, barcodes)
            n_tok, dim = shape if shape is not None else (0, 0)
            writer.provenance["tokens"] = {
                "blocks": blocks,
                "start_block": start,
                "n_tokens": int(n_tok),
                "dim": int(dim),
                "bytes_per_tile": int(n_tok * dim * np.dtype(dtype).itemsize),
            }
            writer.provenance["seconds"] = time.perf_counter() - t0
    finally:
        handle.remove()
    log.info(
        "cached tokens entering block %d of %s: %s bytes per tile",
        start,
        encoder,
        writer.provenance["tokens"]["bytes_per_tile"],
    )
    return writer.provenance


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
    from histofuse.cache.store import open_features

    table = open_features(list(stores))
    info = table.provenance.get("tokens")
    if not info:
        raise HistofuseError(f"{stores[0]} is not a token store (no `tokens` provenance)")
    keep = table.index["sample"].isin(samples).to_numpy()
    flat = np.asarray(table.features[np.flatnonzero(keep)].compute(), dtype=np.float32)
    tokens = flat.reshape(len(flat), info["n_tokens"], info["dim"])
    return tokens, table.index[keep].reset_index(drop=True), dict(info)
