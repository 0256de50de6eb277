"""Large slides without a pyramid: tissue detection stays within a memory bound and warns.

A real 20000 × 20000 px single-level tiled-JPEG TIFF (1.6 GB as RGBA) is written tile by tile;
tissue is a disk in one part of it. Detection runs in a fresh process whose peak resident size
(``VmHWM``, which counts numpy's and OpenSlide's buffers alike) must stay far below the
image's size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from histofuse.slides import tissue as tissue_mod
from histofuse.slides.spec import TilingSpec
from histofuse.slides.tissue import detect_tissue
from histofuse.slides.wsi import best_level

SIDE = 20_000
MPP = 0.25
TILE = 256
DISK = (6_000, 6_000, 4_000)  # centre x, centre y, radius in level-0 px
MAX_RSS_MB = 400  # the image alone is 1600 MB as RGBA


def _tiles(rng: np.random.Generator):
    """The slide's 256-px tiles in row order: white, and noisy pink inside the disk."""
    cx, cy, r = DISK
    white = np.full((TILE, TILE, 3), 245, np.uint8)
    yy, xx = np.mgrid[:TILE, :TILE]
    for y in range(0, SIDE, TILE):
        for x in range(0, SIDE, TILE):
            inside = (xx + x - cx) ** 2 + (yy + y - cy) ** 2 < r**2
            if not inside.any():
                yield white
                continue
            tile = white.copy()
            pink = np.array([200, 90, 170]) + rng.integers(-20, 20, (int(inside.sum()), 3))
            tile[inside] = pink.clip(0, 255).astype(np.uint8)
            yield tile


@pytest.fixture(scope="module")
def flat_slide(tmp_path_factory) -> Path:
    """A single-level 20000 × 20000 px tiled-JPEG TIFF at 0.25 µm/px, written tile by tile."""
    path = tmp_path_factory.mktemp("flat") / "flat.tif"
    ppcm = 1e4 / MPP
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            _tiles(np.random.default_rng(0)),
            shape=(SIDE, SIDE, 3),
            dtype=np.uint8,
            photometric="rgb",
            tile=(TILE, TILE),
            compression="jpeg",
            resolution=(ppcm, ppcm),
            resolutionunit="CENTIMETER",
            metadata=None,
        )
    with openslide.OpenSlide(path) as slide:
        assert slide.level_count == 1 and slide.dimensions == (SIDE, SIDE)
    return path


# The peak RSS of this process's own memory (VmHWM, kB): unlike ru_maxrss, which Linux carries
# over exec from the forked copy of the (possibly large) test process, it starts at exec.
_TILE = """
import re, sys
from histofuse.cli import main
rc = main(sys.argv[1:])
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024)
sys.exit(rc)
"""


def _disk_fraction(x0: int, y0: int, side: int, n: int = 400) -> float:
    """The fraction of a level-0 square covered by the drawn disk (n × n point grid)."""
    cx, cy, r = DISK
    u = (np.arange(n) + 0.5) * side / n
    return float((((x0 + u[None, :] - cx) ** 2 + (y0 + u[:, None] - cy) ** 2) < r**2).mean())


@pytest.mark.slow
def test_flat_slide_is_tiled_in_bounded_memory_with_a_recorded_warning(flat_slide, tmp_path):
    """`histofuse tile` on the flat slide: peak RSS far below the image, a right mask, and the
    no-pyramid warning logged and in the stats."""
    import pandas as pd

    out = tmp_path / "flat.parquet"
    tiling = json.dumps({"mode": "grid", "patch_um": 1000, "min_tissue": 0})  # 4000-px tiles
    args = ["tile", "--sample", "flat", "--slide", str(flat_slide), "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-c", _TILE, *args, "--tiling", tiling],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    stats = json.loads((tmp_path / "flat.json").read_text())
    rss_mb = float(run.stdout.split()[-1])
    print(f"flat {SIDE}×{SIDE} px slide: histofuse tile peak RSS {rss_mb:.0f} MB, tissue "
          f"detection {stats['timings']['tissue']:.1f} s")  # fmt: skip
    assert rss_mb < MAX_RSS_MB
    # warned before the slow read, naming the slide and the fix, and recorded in the stats
    assert "WARNING" in run.stderr and "no pyramid" in run.stderr and str(flat_slide) in run.stderr
    assert len(stats["warnings"]) == 1 and "vips tiffsave" in stats["warnings"][0]
    assert str(flat_slide) in stats["warnings"][0]
    # the mask is at mask_mpp (8 µm/px = 32 level-0 px) and matches the drawn disk
    assert stats["tissue_downsample"] == 32 and stats["tissue_level"] == 0
    _, _, r = DISK
    assert stats["tissue_fraction"] == pytest.approx(np.pi * r**2 / SIDE**2, rel=0.03)
    table = pd.read_parquet(out)
    assert len(table) == 25  # 5 × 5 tiles of 4000 px, none dropped
    truth = [_disk_fraction(x0, y0, s0) for x0, y0, s0 in table[["x0", "y0", "size0"]].values]
    np.testing.assert_allclose(table["tissue"], truth, atol=0.02)
    # the tile (4000..8000)² lies inside the disk; the last, bottom-right, is blank
    assert table["tissue"].max() == 1 and table["tissue"].iloc[-1] == 0


@pytest.fixture(scope="module")
def demo_slide(small_cohort) -> Path:
    from histofuse.samples import load_samples

    sheet = load_samples(small_cohort)
    return Path(sheet["slide"].iloc[0])


def test_pyramid_slide_mask_is_the_whole_level_mask(demo_slide):
    """On a pyramid, the mask is computed on the whole best level, read at once, as before."""
    from skimage.color import rgb2hsv

    from histofuse.slides.tissue import tissue_mask, tissue_score

    spec = TilingSpec.from_config()
    with openslide.OpenSlide(demo_slide) as slide:
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
        m = detect_tissue(slide, mpp, spec.tissue)
        level = best_level(tuple(slide.level_downsamples), spec.tissue.mask_mpp / mpp)
        w, h = slide.level_dimensions[level]
        rgb = np.asarray(slide.read_region((0, 0), level, (w, h)).convert("RGB"))
        ds = slide.level_downsamples[level]
        n_levels = slide.level_count
    assert n_levels > 1 and m.level == level and m.downsample == ds
    assert np.array_equal(m.rgb, rgb) and m.warnings == ()
    # the saturation score is skimage's HSV saturation, float for float
    assert np.array_equal(tissue_score(rgb, "saturation"), rgb2hsv(rgb)[..., 1])
    assert np.array_equal(m.mask, tissue_mask(rgb, mpp * ds, spec.tissue)[0])
    assert 0.05 < m.fraction < 0.95


def test_thumbnail_plan_reads_a_small_level_whole_and_shrinks_the_rest():
    from histofuse.slides.tissue import thumbnail_plan

    pyramid = (1.0, 4.0, 16.0, 64.0)
    dims = ((100_000, 80_000), (25_000, 20_000), (6_250, 5_000), (1_562, 1_250))
    assert thumbnail_plan(pyramid, dims, 32.0, max_px=40_000_000) == (2, 1)  # as before
    assert thumbnail_plan(pyramid, dims, 32.0, max_px=8_000_000) == (2, 2)  # level too large
    assert thumbnail_plan(pyramid, dims, 32.0, max_px=2_000_000) == (2, 4)  # bound wins
    flat = ((20_000, 20_000),)
    assert thumbnail_plan((1.0,), flat, 32.0) == (0, 32)
    assert thumbnail_plan((1.0,), ((2_000, 1_000),), 32.0) == (0, 32)  # small, still shrunk
    assert thumbnail_plan((1.0,), ((2_000, 1_000),), 2.0) == (0, 1)


def test_block_thumbnail_is_the_area_mean_of_the_level(demo_slide, monkeypatch, caplog):
    """Built from blocks (some partial), the thumbnail equals the whole level shrunk at once,
    and its tissue mask agrees with the mask of the pyramid level of the same scale."""
    from histofuse.slides.tissue import slide_rgb, tissue_mask

    monkeypatch.setattr(tissue_mod, "BLOCK_PX", 200)  # 192- and 196-px blocks (at 16× and 28×)
    monkeypatch.setattr(tissue_mod, "PROGRESS_S", 0.0)  # a progress line per row of blocks
    caplog.set_level("INFO", logger=tissue_mod.__name__)
    spec = TilingSpec.from_config()
    with openslide.OpenSlide(demo_slide) as slide:
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
        w, h = slide.dimensions
        level0 = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
        thumb28 = slide_rgb(slide, 0, 28)
        thumb = slide_rgb(slide, 0, 16)
        pyramid = detect_tissue(slide, mpp, spec.tissue)
    assert w % 196 and h % 196 and w % 28 and h % 28  # partial blocks, partial last pixels
    assert np.array_equal(thumb28, np.asarray(Image.fromarray(level0).reduce(28)))
    assert np.array_equal(thumb, np.asarray(Image.fromarray(level0).reduce(16)))
    progress = [r.getMessage() for r in caplog.records if "% of 1600×1200 px" in r.getMessage()]
    assert len(progress) == 2 * 7 and progress[-1].split(": ")[1].startswith("100%"), progress
    assert pyramid.downsample == 16  # the demo's level 2: same scale
    blocks = tissue_mask(thumb, mpp * 16, spec.tissue)[0][
        : pyramid.mask.shape[0], : pyramid.mask.shape[1]
    ]
    iou = (blocks & pyramid.mask).sum() / (blocks | pyramid.mask).sum()
    assert iou > 0.9, iou
