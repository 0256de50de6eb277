"""Tile reader throughput: TileDataset vs a raw ``read_region`` + resize loop, same tiles.

A generated 40× slide (0.25 µm/px, JPEG-tiled pyramidal TIFF, 256 px tiles) is tiled on a grid
of 112 µm tiles at 0.5 µm/px (448 level-0 px resampled to 224 px). The reference reads each tile
with ``OpenSlide.read_region`` at the same pyramid level, converts to RGB and resizes with the
same Lanczos filter; the reader reads adjacent tiles as one region and cuts them. Both run in
this process (one worker), alternating every ``CHUNK`` tiles, ``REPEATS`` passes. ``ratio`` =
reader tiles/s ÷ raw loop tiles/s. ``workers_speedup`` = tiles/s through a DataLoader with 2
workers ÷ with 1 worker, both with persistent workers as the embed stage runs them (one loader
per job): the first pass starts the workers and opens the slide in each, and the following
passes are timed (``*_cold`` figures include the start-up). Other processes on the machine
limit what a second worker can add; the load average is recorded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

REPEATS = 3
CHUNK = 8
SIDE_PX = 8192
MPP = 0.25


def _write_slide(path: Path) -> None:
    from scipy import ndimage

    from histofuse.demo.pyramid import write_pyramid

    rng = np.random.default_rng(0)
    small = rng.random((SIDE_PX // 8, SIDE_PX // 8, 3)).astype(np.float32)
    small = ndimage.gaussian_filter(small, (2, 2, 0))
    big = ndimage.zoom(small, (8, 8, 1), order=1)
    noise = rng.normal(0, 12, big.shape).astype(np.float32)
    rgb = np.clip(90 + 300 * (big - big.mean()) + 120 + noise, 0, 255).astype(np.uint8)
    write_pyramid(rgb, path, MPP)


def _raw_tiles(slide, boxes: np.ndarray, level: int, ds: float, px: int) -> None:
    from PIL import Image

    for x0, y0, s0 in boxes.tolist():
        side = max(1, int(np.ceil(s0 / ds)))
        region = slide.read_region((x0, y0), level, (side, side)).convert("RGB")
        np.array(region.resize((px, px), Image.Resampling.LANCZOS))


def _loader_rates(ds, workers: int, passes: int = 2) -> tuple[float, float]:
    """Returns (warm, cold) tiles/s of a DataLoader with persistent workers."""
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=32, num_workers=workers, persistent_workers=True)
    t0 = time.perf_counter()
    n = sum(len(b) for b in loader)  # starts the workers; each opens the slide
    cold = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    n = sum(len(b) for _ in range(passes) for b in loader)
    warm = n / (time.perf_counter() - t0)
    del loader
    return warm, cold


def run(tmp: Path) -> dict:
    """Runs the benchmark; returns tiles/s of both readers, the ratio and the 2-worker figure."""
    from histofuse.slides.reader import TileDataset
    from histofuse.slides.spec import TilingSpec
    from histofuse.slides.tiling import tile_sample

    slide = tmp / "bench.tiff"
    _write_slide(slide)
    spec = TilingSpec.from_config({"mode": "grid", "min_tissue": 0.0})
    table, meta, _ = tile_sample(slide, spec)
    boxes = table[["x0", "y0", "size0"]].to_numpy(dtype=np.int64)
    n = len(boxes)
    # The two readers alternate every CHUNK tiles (each with its own slide handle), so that load
    # from other processes on the machine falls on both alike.
    import openslide

    reader_s = raw_s = 0.0
    for _ in range(REPEATS):
        ds = TileDataset(table, meta)
        with openslide.OpenSlide(str(slide)) as raw:
            for start in range(0, n, CHUNK):
                t0 = time.perf_counter()
                for i in range(start, min(n, start + CHUNK)):
                    ds[i]
                t1 = time.perf_counter()
                _raw_tiles(
                    raw,
                    boxes[start : start + CHUNK],
                    meta["read_level"],
                    meta["read_downsample"],
                    spec.patch_px,
                )
                reader_s += t1 - t0
                raw_s += time.perf_counter() - t1
    rates: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for _ in range(2):  # alternate, so load from other processes falls on both alike
        for workers in rates:
            rates[workers].append(_loader_rates(TileDataset(table, meta), workers))
    one, two = (max(r[0] for r in rates[w]) for w in (1, 2))
    one_cold, two_cold = (max(r[1] for r in rates[w]) for w in (1, 2))
    reader_rate, raw_rate = REPEATS * n / reader_s, REPEATS * n / raw_s
    return {
        "ratio": reader_rate / raw_rate,
        "reader_tiles_per_s": reader_rate,
        "raw_tiles_per_s": raw_rate,
        "loader_1_worker_tiles_per_s": one,
        "loader_2_workers_tiles_per_s": two,
        "workers_speedup": two / one,
        "loader_1_worker_cold_tiles_per_s": one_cold,
        "loader_2_workers_cold_tiles_per_s": two_cold,
        "workers_speedup_cold": two_cold / one_cold,
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "n_tiles": n,
        "tile_px": spec.patch_px,
        "level0_tile_px": int(boxes[0, 2]),
        "read_level": meta["read_level"],
        "slide_px": SIDE_PX,
        "repeats": REPEATS,
    }
