"""Embed stage vs the pure model forward, side by side in one process on the same device.

The stage is :func:`histofuse.embed.embed_shard` on the tiles of a generated cohort: reading
patches from the slides, batching, the forward pass, and writing the Zarr store with its
manifest. The reference is the same encoder's forward (uint8 → normalised float included) on
pre-made uint8 tensors of the same batch size and tile count, under ``torch.inference_mode``.
``ratio`` = stage tiles/s ÷ pure-forward tiles/s, so 1.0 means the stage adds no overhead. The
CPU run uses a test encoder; on a GPU machine the same measurement is repeated on CUDA.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

ENCODER = "tiny-vit"
BATCH = 64
WORKERS = 1  # one reader process overlaps slide reads with the forward pass


def _tiles(tmp: Path) -> list[Path]:
    from histofuse.demo import write_demo_cohort
    from histofuse.samples import load_samples
    from histofuse.slides.spec import TilingSpec
    from histofuse.slides.tiling import tile_spots, write_tiles

    sheet = load_samples(write_demo_cohort(tmp / "cohort", seed=0, n_patients=2))
    spec = TilingSpec(patch_um=112.0, target_mpp=1.0)
    out = []
    for sample, row in sheet.iterrows():
        table, meta = tile_spots(row["slide"], row["expression"], spec)
        meta["sample"] = sample
        out.append(tmp / "tiles" / f"{sample}.parquet")
        write_tiles(table, meta, out[-1])
    return out


def _pure_forward(encoder: str, n: int, size: int, device: str, repeats: int) -> float:
    import torch

    from histofuse.embed import amp_settings
    from histofuse.encoders.model import create_encoder

    model = create_encoder(encoder, device=device)
    use_amp, amp_dtype = amp_settings(model.spec, device)
    gen = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, 256, (min(BATCH, n - i), size, size, 3), dtype=torch.uint8, generator=gen)
        for i in range(0, n, BATCH)
    ]
    batches = [b.to(device) for b in batches]
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        with (
            torch.inference_mode(),
            torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=use_amp),
        ):
            for b in batches:
                model(b).float().cpu()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def _stage(tiles: list[Path], encoder: str, out: Path, device: str, repeats: int) -> float:
    from histofuse.embed import embed_shard

    best = float("inf")
    for i in range(repeats):
        t = time.perf_counter()
        embed_shard(
            tiles, encoder, out / f"{i}.zarr", batch_size=BATCH, num_workers=WORKERS, device=device
        )
        best = min(best, time.perf_counter() - t)
    return best


def _measure(tiles: list[Path], encoder: str, tmp: Path, device: str) -> dict[str, Any]:
    from histofuse.encoders.registry import get_spec
    from histofuse.slides.tiling import read_tiles

    n = sum(len(read_tiles(p)[0]) for p in tiles)
    size = int(read_tiles(tiles[0])[1]["patch_px"])
    # warm up both paths once (allocator, kernels), then take the best of three
    _pure_forward(encoder, min(n, BATCH), size, device, 1)
    pure = _pure_forward(encoder, n, size, device, 3)
    stage = _stage(tiles, encoder, tmp / f"stores-{encoder}", device, 3)
    return {
        "encoder": encoder,
        "arch": get_spec(encoder).arch,
        "device": device,
        "n_tiles": n,
        "tile_px": size,
        "batch_size": BATCH,
        "stage_s": round(stage, 4),
        "pure_forward_s": round(pure, 4),
        "stage_tiles_per_s": round(n / stage, 1),
        "pure_tiles_per_s": round(n / pure, 1),
        "ratio": (n / stage) / (n / pure),
    }


def run(tmp: Path) -> dict[str, Any]:
    """Measures the embed stage against the pure forward; returns ``ratio`` = stage ÷ forward."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    tiles = _tiles(tmp)
    result = _measure(tiles, ENCODER, tmp, "cpu")
    if torch.cuda.is_available():
        result["cuda"] = _measure(tiles, ENCODER, tmp, "cuda")
    return result
