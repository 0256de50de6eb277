"""Writes a slide image as the tiled-JPEG pyramidal TIFF that scanners produce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from skimage.transform import downscale_local_mean

from histofuse.atomic import atomic_path

TILE_SIZE = 256
JPEG_QUALITY = 90


def write_pyramid(rgb: np.ndarray, path: Path, mpp: float) -> None:
    """Writes a tiled-JPEG pyramidal TIFF that OpenSlide reads as 'generic-tiff'.

    What OpenSlide 4 needs: every level tiled (a striped TIFF is refused), the reduced levels as
    further pages of the main IFD chain (with SubIFDs it sees level 0 only), and XResolution /
    YResolution with ResolutionUnit centimeter (or inch; none gives no ``openslide.mpp-x``).
    Tiles are JPEG (YCbCr 2x2, as tifffile writes RGB input) at quality 90; levels shrink by 4
    with area averaging.

    Args:
        rgb: Level 0, (H, W, 3) uint8.
        path: The TIFF file, replaced atomically.
        mpp: Level-0 µm per pixel.
    """
    width = rgb.shape[1]
    bigtiff = rgb.nbytes > 2**31
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
        for i, level in enumerate(_levels(rgb)):
            scale = level.shape[1] / width
            ppcm = 1e4 / mpp * scale
            tif.write(
                level,
                photometric="rgb",  # stored as JPEG YCbCr 2x2, as scanners do
                tile=(TILE_SIZE, TILE_SIZE),
                compression="jpeg",
                compressionargs={"level": JPEG_QUALITY},
                resolution=(ppcm, ppcm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if i else 0,
                metadata=None,
                software="histofuse.demo",
            )


def _levels(rgb: np.ndarray) -> list[np.ndarray]:
    """Level 0 and its 4× reductions: at least two, then down to about one tile."""
    levels = [rgb]
    while True:
        h, w = levels[-1].shape[:2]
        if min(h, w) < 4 or (len(levels) >= 3 and (min(h, w) < 64 or max(h, w) <= TILE_SIZE)):
            return levels
        hp, wp = -(-h // 4) * 4, -(-w // 4) * 4
        padded = np.pad(levels[-1], ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")
        small = downscale_local_mean(padded, (4, 4, 1))
        levels.append(np.clip(np.rint(small), 0, 255).astype(np.uint8))
