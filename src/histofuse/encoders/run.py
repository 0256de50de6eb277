"""One encoder run: load an encoder once, stream a shard's tiles through it, store one row per tile.

Both encoder stages go through :func:`run_encoder`: ``embed`` (pooled features,
:mod:`histofuse.embed`) and ``tokens`` (the tokens entering a ViT's last blocks, for PEKA's tail
mode, :mod:`histofuse.peka.tokens`). The run owns what they share:

- the device: ``auto``/``cuda`` hold one GPU slot for the whole job
  (:func:`histofuse.devices.claim_device`), so two local GPU jobs never share a device;
- the model, built once on that device;
- the shard: its tiles tables, less the samples the tile step recorded as failed
  (``tiling.on_error: record``), whose reasons go to the provenance as ``failed_samples``;
- reading: one DataLoader over all samples of the shard, its workers opening the slides, uint8
  batches moved to the device, halved on CUDA out-of-memory;
- writing: each sample's rows into one feature store (:class:`FeatureStoreWriter`: atomic,
  manifest last) as soon as its last tile is done, with provenance and timings.

What differs is an :class:`Output`: its cache key, its dtype on disk and, per batch, the rows it
computes from the model (:class:`Forward`).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from histofuse.errors import HistofuseError
from histofuse.settings import Embed

log = logging.getLogger(__name__)

_VERSIONED = ("histofuse", "torch", "timm", "zarr", "numcodecs", "openslide-python", "numpy")


@dataclass(frozen=True)
class Forward:
    """A model prepared for one output.

    Attributes:
        fn: Maps a uint8 batch (B, H, W, 3) on the device to rows (B, width).
        width: Values per row (what an empty sample's ``(0, width)`` array holds).
        autocast: Run under the spec's mixed precision on CUDA (:func:`amp_settings`).
        provenance: Entries the output adds to the store's provenance.
    """

    fn: Callable[[Any], Any]
    width: int
    autocast: bool
    provenance: dict[str, Any] = field(default_factory=dict)


class Output(Protocol):
    """What an encoder run computes per batch and how its store is keyed and written."""

    label: str
    """Names the run in progress bars and logs (``embed``, ``tokens``)."""
    dtype: str
    """Row dtype on disk (``float16`` or ``float32``)."""

    def cache_key(self, model: Any, tiling_fingerprint: str) -> str:
        """The store's cache key: what must match for its rows to be reused."""
        ...

    def forward(self, model: Any) -> AbstractContextManager[Forward]:
        """Prepares the model for the run; the context undoes what the run must not keep."""
        ...


@dataclass(frozen=True)
class Shard:
    """The tiles tables of one shard.

    Attributes:
        tables: ``(path, table, meta)`` of each sample to encode, in the order given.
        failed: Sample → the reason the tile step recorded for not tiling it.
        fingerprint: The tiling fingerprint shared by the tables (``""`` when none).
        tiling: The tiling spec of the tables (``{}`` when none).
    """

    tables: list[tuple[Path, Any, dict[str, Any]]]
    failed: dict[str, str]
    fingerprint: str
    tiling: dict[str, Any]


def embed_settings(**given: Any) -> Embed:
    """The ``embed`` settings from keys of that section; a key left out (or None): the default.

    Defaults come from the config schema only.

    Raises:
        HistofuseError: Naming a key the section does not have, or a value it does not allow.
    """
    from histofuse import settings

    return settings.load(Embed, "embed", {k: v for k, v in given.items() if v is not None})


def package_versions() -> dict[str, str]:
    """Returns the versions of the packages that shape the features."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


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
    """Runs a batch, halving the sub-batch size on CUDA out-of-memory until it fits.

    Args:
        model: The prepared model (:attr:`Forward.fn`).
        x: A uint8 batch (B, H, W, 3) on the model's device.
        state: ``{"batch_size": n}``; lowered in place when memory runs out, so later batches
            start at the size that fitted.

    Returns:
        Float32 rows (B, width) on the host.

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


def read_shard(tiles: Sequence[str | Path]) -> Shard:
    """Reads the tiles tables of a shard, setting aside the samples that were not tiled.

    Args:
        tiles: Tiles tables (``results/tiles/{sample}.parquet``), or folders of them.

    Raises:
        HistofuseError: If the tables were cut with different tiling specs.
    """
    from histofuse.slides.tiling import read_tiles

    files: list[Path] = []
    for p in map(Path, tiles):
        files.extend(sorted(p.glob("*.parquet")) if p.is_dir() else [p])
    tables = [(p, *read_tiles(p)) for p in files]
    # Samples the tile step could not tile (tiling.on_error: record): no rows, only the reason.
    failed = {p.name.removesuffix(".parquet"): m["error"] for p, _, m in tables if "error" in m}
    tables = [t for t in tables if "error" not in t[2]]
    fingerprints = sorted({meta["tiling_fingerprint"] for _, _, meta in tables})
    if len(fingerprints) > 1:
        raise HistofuseError(
            f"tiles of one shard were cut with different tiling specs ({fingerprints}); re-run "
            "the tile step for all samples"
        )
    tiling = tables[0][2].get("tiling", {}) if tables else {}
    return Shard(tables, failed, next(iter(fingerprints), ""), tiling)


def run_encoder(
    output: Output,
    tiles: Sequence[str | Path],
    encoder: str,
    out: str | Path,
    weights: str | Path | None,
    settings: Embed,
    prefetch_factor: int = 4,
) -> dict[str, Any]:
    """Runs one encoder over every tile of a shard and writes one store of ``output``'s rows.

    Args:
        output: What to compute per batch and how to key the store (:class:`Output`).
        tiles: Tiles tables (one per sample) or folders of them.
        encoder: Registry id of the encoder.
        out: The store path (``….zarr``); its manifest is written beside it last.
        weights: A weights file or hub id overriding the spec's default.
        settings: The ``embed`` settings (batch size, loader workers, device).
        prefetch_factor: Batches each worker reads ahead of the forward pass.

    Returns:
        The store's provenance.
    """
    from histofuse.devices import claim_device
    from histofuse.encoders.model import create_encoder

    with claim_device(settings.device) as device:
        if device.startswith("cuda"):
            import torch

            torch.cuda.set_device(device)  # out-of-memory clean-up and kernels act on this device
        t0 = time.perf_counter()
        model = create_encoder(encoder, weights=weights, device=device)
        timings = {"load_model": time.perf_counter() - t0}
        shard = read_shard(tiles)
        with output.forward(model) as forward:
            provenance = _provenance(model, weights, shard, device)
            provenance["cache_key"] = output.cache_key(model, shard.fingerprint)
            provenance.update(forward.provenance)
            stream = _Stream(output, forward, model.spec, device, timings)
            loader = _loader(shard, settings, device, prefetch_factor)
            provenance = stream.run(shard, loader, out, provenance, settings.batch_size, t0)
    log.info(
        "%s: embedded %d tiles with %s: %s",
        output.label,
        provenance["n_tiles"],
        encoder,
        json.dumps(provenance["timings"]),
    )
    return provenance


def _provenance(model: Any, weights: Any, shard: Shard, device: str) -> dict[str, Any]:
    """The provenance every encoder store carries (the output adds its cache key and more)."""
    spec = model.spec
    provenance: dict[str, Any] = {
        "cache_key": None,  # the output's, set by the run
        "encoder": spec.to_dict(),
        "weights_sha256": model.weights_sha256,
        "weights_source": str(weights) if weights is not None else spec.weights,
        "transform": {
            "input_size": spec.input_size,
            "interpolation": spec.interpolation,
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        "pooling": spec.pooling,
        "tiling": shard.tiling,
        "tiling_fingerprint": shard.fingerprint,
        "device": device,
        "versions": package_versions(),
    }
    if shard.failed:
        provenance["failed_samples"] = shard.failed
    # µm/px of each sample's level 0, as the tile step resolved it (slide, sheet or spot pitch):
    # what turns the cached pixel coordinates into µm downstream (spatial-block splits).
    provenance["sample_mpp"] = {
        p.name.removesuffix(".parquet"): [meta["mpp_x"], meta["mpp_y"]]
        for p, _, meta in shard.tables
        if "mpp_x" in meta and "mpp_y" in meta
    }
    return provenance


def _loader(shard: Shard, settings: Embed, device: str, prefetch_factor: int) -> Any:
    """One DataLoader over all samples of the shard (empty when the shard has no tiles).

    Its workers start once, and reading runs ahead of the forward pass across sample boundaries.
    """
    from torch.utils.data import ConcatDataset, DataLoader

    from histofuse.slides.reader import open_tile_source

    if not sum(len(t) for _, t, _ in shard.tables):
        return ()
    workers = settings.num_workers
    return DataLoader(
        ConcatDataset([open_tile_source(table, meta) for _, table, meta in shard.tables]),
        batch_size=settings.batch_size,
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )


class _Stream:
    """Runs batches through a prepared model and writes each sample once its rows are all in."""

    def __init__(
        self, output: Output, forward: Forward, spec: Any, device: str, timings: dict[str, float]
    ) -> None:
        self.output, self.forward, self.spec, self.device = output, forward, spec, device
        use_amp, amp_dtype = amp_settings(spec, device)
        self.amp = (use_amp and forward.autocast, amp_dtype)
        self.timings = timings
        self.timings.update(dict.fromkeys(("read", "forward", "write", "transfer"), 0.0))

    def run(
        self,
        shard: Shard,
        loader: Any,
        out: str | Path,
        provenance: dict[str, Any],
        batch_size: int,
        t0: float,
    ) -> dict[str, Any]:
        """Writes the store; returns its provenance with timings, tile count and batch size."""
        from tqdm import tqdm

        from histofuse.cache import FeatureStoreWriter

        sizes = [len(t) for _, t, _ in shard.tables]
        total = sum(sizes)
        state = {"batch_size": batch_size}
        desc = f"{self.output.label} {self.spec.name}"
        with (
            FeatureStoreWriter(out, provenance, dtype=self.output.dtype) as writer,
            tqdm(total=total, desc=desc, unit="tile", mininterval=5) as bar,
        ):
            pending = _SampleBuffer(shard.tables, sizes, self.forward.width)
            self._write_ready(writer, pending)  # samples without tiles
            t_read = time.perf_counter()
            for x in loader:
                self.timings["read"] += time.perf_counter() - t_read
                pending.add(self._rows(x, state))
                bar.update(len(x))
                self._write_ready(writer, pending)
                t_read = time.perf_counter()
            if pending.next != len(sizes):
                raise HistofuseError(f"encoded {pending.rows} tiles short of the shard's {total}")
            self.timings["total"] = time.perf_counter() - t0
            used = {"requested": batch_size, "used": state["batch_size"]}
            writer.provenance.update(timings=self.timings, n_tiles=total, batch_size=used)
        return writer.provenance

    def _rows(self, batch: Any, state: dict[str, int]) -> np.ndarray:
        """Moves a batch to the device and computes its rows (timing transfer and forward)."""
        import torch

        t_move = time.perf_counter()
        x = batch.to(self.device, non_blocking=True)
        t_fwd = time.perf_counter()
        self.timings["transfer"] += t_fwd - t_move
        use_amp, amp_dtype = self.amp
        with (
            torch.inference_mode(),
            torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=use_amp),
        ):
            rows = forward_with_backoff(self.forward.fn, x, state)
        self.timings["forward"] += time.perf_counter() - t_fwd
        return rows

    def _write_ready(self, writer: Any, pending: _SampleBuffer) -> None:
        """Writes every sample whose rows are all in."""
        for path, table, _ in pending.flush():
            t = time.perf_counter()
            coords = np.rint(table[["x", "y"]].to_numpy()).astype(np.int64)
            barcodes = table["barcode"].to_numpy() if "barcode" in table else None
            writer.add(path.name.removesuffix(".parquet"), pending.take(), coords, barcodes)
            self.timings["write"] += time.perf_counter() - t


class _SampleBuffer:
    """Collects batch outputs and hands back each sample's rows once all of them are in."""

    def __init__(self, tables: list[tuple[Path, Any, Any]], sizes: list[int], dim: int) -> None:
        self.tables, self.sizes, self.dim = tables, sizes, dim
        self.next = 0  # index of the next sample to complete
        self.parts: list[np.ndarray] = []
        self.rows = 0
        self._ready: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        self.parts.append(rows)
        self.rows += len(rows)

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
