"""The embed stage: run one encoder once over every tile of a shard and cache the features.

The model is loaded once per job; tiles stream through DataLoader workers that open the slide
themselves; uint8 batches go to the device, where conversion and normalisation happen; features
are written per sample into one Zarr store, atomically, with provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from histofuse.errors import HistofuseError

log = logging.getLogger(__name__)

_VERSIONED = ("histofuse", "torch", "timm", "zarr", "numcodecs", "openslide-python", "numpy")


def package_versions() -> dict[str, str]:
    """Returns the versions of the packages that shape the features."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def cache_key(
    spec_fingerprint: str, weights_sha256: str, tiling_fingerprint: str, dtype: str
) -> str:
    """Returns the cache key of a feature store: what must match for features to be reused."""
    blob = json.dumps([spec_fingerprint, weights_sha256, tiling_fingerprint, dtype]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resolve_device(device: str) -> str:
    """Resolves ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def amp_settings(spec: Any, device: str) -> tuple[bool, Any]:
    """Returns (autocast on?, autocast dtype) for a spec on a device: the spec's precision on CUDA.

    A GPU without bfloat16 support (before Ampere) runs bf16 specs in fp16.

    Args:
        spec: The encoder spec (``precision`` is ``fp32``, ``fp16`` or ``bf16``).
        device: The resolved device.
    """
    import torch

    use_amp = device.startswith("cuda") and spec.precision in ("fp16", "bf16")
    bf16 = spec.precision == "bf16"
    if use_amp and bf16 and not torch.cuda.is_bf16_supported():
        log.warning("%s asks for bf16, which this GPU lacks; using fp16", spec.name)
        bf16 = False
    return use_amp, torch.bfloat16 if bf16 else torch.float16


def forward_with_backoff(model: Any, x: Any, state: dict[str, int]) -> np.ndarray:
    """Embeds a batch, halving the sub-batch size on CUDA out-of-memory until it fits.

    Args:
        model: The encoder (or its compiled wrapper).
        x: A uint8 batch (B, H, W, 3) on the model's device.
        state: ``{"batch_size": n}``; lowered in place when memory runs out, so later batches
            start at the size that fitted.

    Returns:
        Float32 features (B, D) on the host.

    Raises:
        torch.OutOfMemoryError: If a single tile does not fit.
    """
    import torch

    out = []
    i = 0
    while i < len(x):
        step = max(1, min(state["batch_size"], len(x) - i))
        try:
            out.append(model(x[i : i + step]).float().cpu().numpy())
        except torch.OutOfMemoryError:
            if step == 1:
                raise
            state["batch_size"] = step // 2
            log.warning("out of memory at batch size %d; retrying at %d", step, step // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        i += step
    return np.concatenate(out)


class _SampleBuffer:
    """Collects batch outputs and hands back each sample's features once all of them are in."""

    def __init__(self, tables: list[tuple[Path, Any, Any]], sizes: list[int], dim: int) -> None:
        self.tables, self.sizes, self.dim = tables, sizes, dim
        self.next = 0  # index of the next sample to complete
        self.parts: list[np.ndarray] = []
        self.rows = 0
        self._ready: np.ndarray | None = None

    def add(self, features: np.ndarray) -> None:
        self.parts.append(features)
        self.rows += len(features)

    def flush(self) -> Any:
        """Yields ``(path, table, meta)`` of each sample now complete; call :meth:`take` for it."""
        while self.next < len(self.sizes) and self.rows >= self.sizes[self.next]:
            n = self.sizes[self.next]
            buf = np.concatenate(self.parts) if self.parts else np.zeros((0, self.dim), np.float32)
            self._ready, rest = buf[:n], buf[n:]
            self.parts, self.rows = ([rest] if len(rest) else []), len(rest)
            self.next += 1
            yield self.tables[self.next - 1]

    def take(self) -> np.ndarray:
        out, self._ready = self._ready, None
        return out


def _write_sample(
    writer: Any, path: Path, table: Any, features: np.ndarray, timings: dict[str, float]
) -> None:
    t = time.perf_counter()
    sample = path.name.removesuffix(".parquet")
    coords = np.rint(table[["x", "y"]].to_numpy()).astype(np.int64)
    barcodes = table["barcode"].to_numpy() if "barcode" in table else None
    writer.add(sample, features, coords, barcodes)
    timings["write"] += time.perf_counter() - t


def embed_shard(
    tiles: Sequence[str | Path],
    encoder: str,
    out: str | Path,
    weights: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    dtype: str = "float16",
    compile: bool = False,
    prefetch_factor: int = 4,
) -> dict[str, Any]:
    """Embeds every tile of the given tiles tables with one encoder into one feature store.

    ``device`` ``auto`` or ``cuda`` (no index) holds one GPU exclusively for the whole job
    (:func:`histofuse.devices.claim_device`), so two local GPU jobs never share a device.

    Args:
        tiles: Tiles tables (``results/tiles/{sample}.parquet``), one per sample, or folders of
            them.
        encoder: Registry id of the encoder.
        out: The store path (``….zarr``); its manifest is written beside it last.
        weights: A weights file or hub id overriding the spec's default.
        batch_size: Tiles per forward pass.
        num_workers: DataLoader worker processes reading tiles.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: Feature dtype on disk.
        compile: Wrap the model in ``torch.compile``.
        prefetch_factor: Batches each worker reads ahead of the forward pass.

    Returns:
        The store's provenance.
    """
    import torch
    from torch.utils.data import ConcatDataset, DataLoader
    from tqdm import tqdm

    from histofuse.cache.store import FeatureStoreWriter
    from histofuse.devices import claim_device
    from histofuse.encoders.model import create_encoder
    from histofuse.slides.reader import open_tile_source
    from histofuse.slides.tiling import read_tiles

    with claim_device(device) as device:
        device = resolve_device(device)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)  # out-of-memory clean-up and kernels act on this device
        t0 = time.perf_counter()
        model = create_encoder(encoder, weights=weights, device=device)
        timings = {
            "load_model": time.perf_counter() - t0,
            "read": 0.0,
            "forward": 0.0,
            "write": 0.0,
        }
        files = []
        for p in map(Path, tiles):
            files.extend(sorted(p.glob("*.parquet")) if p.is_dir() else [p])
        tables = [(p, *read_tiles(p)) for p in files]
        # Samples the tile step could not tile (tiling.on_error: record): no features, only
        # the reason.
        failed = {p.name.removesuffix(".parquet"): m["error"] for p, _, m in tables if "error" in m}
        tables = [t for t in tables if "error" not in t[2]]
        fingerprints = {meta["tiling_fingerprint"] for _, _, meta in tables}
        if len(fingerprints) > 1:
            raise HistofuseError(
                "tiles of one shard were cut with different tiling specs "
                f"({sorted(fingerprints)}); re-run the tile step for all samples"
            )
        tiling = tables[0][2]["tiling"] if tables else {}
        key = cache_key(
            model.spec.fingerprint(), model.weights_sha256, next(iter(fingerprints), ""), dtype
        )
        provenance = {
            "cache_key": key,
            "encoder": model.spec.to_dict(),
            "weights_sha256": model.weights_sha256,
            "weights_source": str(weights) if weights is not None else model.spec.weights,
            "transform": {
                "input_size": model.spec.input_size,
                "interpolation": model.spec.interpolation,
                "mean": list(model.spec.mean),
                "std": list(model.spec.std),
            },
            "pooling": model.spec.pooling,
            "tiling": tiling,
            "tiling_fingerprint": next(iter(fingerprints), ""),
            "device": device,
            "versions": package_versions(),
        }
        if failed:
            provenance["failed_samples"] = failed
        use_amp, amp_dtype = amp_settings(model.spec, device)
        channels_last = model.spec.pooling == "avg"  # CNN trunks run faster in NHWC
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        forward = torch.compile(model) if compile else model
        timings["transfer"] = 0.0
        total = sum(len(t) for _, t, _ in tables)
        state = {"batch_size": batch_size}
        # One loader over all samples of the shard: its workers start once, and reading runs ahead
        # of the forward pass across sample boundaries. Each sample is written as soon as its last
        # tile is embedded.
        sizes = [len(t) for _, t, _ in tables]
        loader = (
            DataLoader(
                ConcatDataset([open_tile_source(table, meta) for _, table, meta in tables]),
                batch_size=batch_size,
                num_workers=num_workers,
                pin_memory=device.startswith("cuda"),
                prefetch_factor=prefetch_factor if num_workers > 0 else None,
            )
            if total
            else ()
        )
        with (
            FeatureStoreWriter(out, provenance, dtype=dtype) as writer,
            tqdm(total=total, desc=f"embed {encoder}", unit="tile", mininterval=5) as bar,
        ):
            pending = _SampleBuffer(tables, sizes, model.spec.embed_dim)
            for path, table, _ in pending.flush():  # samples without tiles
                _write_sample(writer, path, table, pending.take(), timings)
            t_read = time.perf_counter()
            for batch in loader:
                t_move = time.perf_counter()
                timings["read"] += t_move - t_read
                x = batch.to(device, non_blocking=True)
                t_fwd = time.perf_counter()
                timings["transfer"] += t_fwd - t_move
                with (
                    torch.inference_mode(),
                    torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=use_amp),
                ):
                    pending.add(forward_with_backoff(forward, x, state))
                timings["forward"] += time.perf_counter() - t_fwd
                bar.update(len(x))
                for path, table, _ in pending.flush():
                    _write_sample(writer, path, table, pending.take(), timings)
                t_read = time.perf_counter()
            if pending.next != len(sizes):
                raise HistofuseError(f"embedded {pending.rows} tiles short of the shard's {total}")
            timings["total"] = time.perf_counter() - t0
            writer.provenance["timings"] = timings
            writer.provenance["n_tiles"] = total
            writer.provenance["batch_size"] = {"requested": batch_size, "used": state["batch_size"]}
        log.info("embedded %d tiles with %s: %s", total, encoder, json.dumps(timings))
        return writer.provenance
