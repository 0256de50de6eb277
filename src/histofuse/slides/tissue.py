"""Tissue detection on a low-resolution pyramid level.

The mask is computed on the coarsest level at or finer than ``mask_mpp`` µm/px: a per-pixel
tissue score (HSV saturation, or optical density summed over RGB) is thresholded with Otsu's
method, near-black pixels (scanner borders, black backgrounds) are dropped, then the mask is
closed, opened, stripped of small objects and its holes are filled. Tissue fractions of
level-0 boxes are read from the mask's summed-area table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TissueParams:
    """Tissue detection settings: the config's ``tiling.tissue``.

    Built with the spec by :meth:`histofuse.slides.spec.TilingSpec.from_config`.

    Attributes:
        mask_mpp: µm/px of the level the mask is computed on (coarsest level at or finer).
        method: ``saturation`` (HSV saturation) or ``od`` (optical density, sum over RGB).
        black_value: Pixels whose HSV value is below this (0–255) are background.
        close_um: Radius in µm of the morphological closing that joins nearby tissue.
        min_object_um2: Tissue pieces and holes smaller than this area (µm²) are removed.
    """

    mask_mpp: float
    method: str
    black_value: int
    close_um: float
    min_object_um2: float

    def to_dict(self) -> dict[str, Any]:
        """Returns the parameters as plain data."""
        return asdict(self)


@dataclass
class TissueMask:
    """A boolean tissue mask and its scale.

    Attributes:
        mask: ``(H, W)`` booleans at ``downsample`` level-0 px per mask pixel.
        downsample: Level-0 px per mask pixel.
        level: The pyramid level it was computed from.
        threshold: The Otsu threshold of the tissue score.
        rgb: The level's RGB image (for QC pictures).
    """

    mask: np.ndarray
    downsample: float
    level: int
    threshold: float
    rgb: np.ndarray

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def on_tissue(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether each level-0 point ``(x, y)`` lies on tissue (``False`` outside the mask)."""
        h, w = self.mask.shape
        col = np.floor(np.asarray(x, dtype=np.float64) / self.downsample)
        row = np.floor(np.asarray(y, dtype=np.float64) / self.downsample)
        inside = (col >= 0) & (row >= 0) & (col < w) & (row < h)
        out = np.zeros(inside.shape, dtype=bool)
        out[inside] = self.mask[row[inside].astype(np.int64), col[inside].astype(np.int64)]
        return out

    def box_fractions(self, x0: np.ndarray, y0: np.ndarray, size0: np.ndarray) -> np.ndarray:
        """Returns the tissue fraction of each level-0 square box ``(x0, y0, size0)``.

        Boxes are mapped to mask pixels by rounding their edges; parts outside the slide count as
        background.
        """
        h, w = self.mask.shape
        sat = np.zeros((h + 1, w + 1), dtype=np.int64)
        sat[1:, 1:] = self.mask.astype(np.int64).cumsum(0).cumsum(1)
        ds = self.downsample
        xa = np.rint(np.asarray(x0) / ds).astype(np.int64)
        ya = np.rint(np.asarray(y0) / ds).astype(np.int64)
        xb = np.rint((np.asarray(x0) + np.asarray(size0)) / ds).astype(np.int64)
        yb = np.rint((np.asarray(y0) + np.asarray(size0)) / ds).astype(np.int64)
        xb, yb = np.maximum(xb, xa + 1), np.maximum(yb, ya + 1)
        area = (xb - xa) * (yb - ya)
        xa, xb = np.clip(xa, 0, w), np.clip(xb, 0, w)
        ya, yb = np.clip(ya, 0, h), np.clip(yb, 0, h)
        inside = sat[yb, xb] - sat[ya, xb] - sat[yb, xa] + sat[ya, xa]
        return inside / area


def slide_rgb(slide: Any, level: int) -> np.ndarray:
    """Reads a whole pyramid level as uint8 RGB, transparent pixels composited on white."""
    w, h = slide.level_dimensions[level]
    return rgba_to_rgb(np.asarray(slide.read_region((0, 0), level, (w, h))))


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composites an un-premultiplied RGBA array on white; returns uint8 RGB."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def tissue_score(rgb: np.ndarray, method: str) -> np.ndarray:
    """Per-pixel tissue score: HSV saturation (0–1) or summed optical density."""
    if method == "saturation":
        from skimage.color import rgb2hsv

        return rgb2hsv(rgb)[..., 1]
    if method == "od":
        od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)
        return od.sum(axis=-1)
    raise ValueError(f"unknown tissue method {method!r}; use saturation or od")


def detect_tissue(slide: Any, mpp: float, params: TissueParams) -> TissueMask:
    """Computes the tissue mask of an open slide.

    Args:
        slide: An open OpenSlide slide.
        mpp: Its level-0 µm/px.
        params: Detection settings.

    Returns:
        The mask at the chosen level.
    """
    from scipy import ndimage
    from skimage import filters, morphology

    from histofuse.slides.wsi import best_level

    level = best_level(tuple(slide.level_downsamples), params.mask_mpp / mpp)
    ds = float(slide.level_downsamples[level])
    rgb = slide_rgb(slide, level)
    score = tissue_score(rgb, params.method)
    value = rgb.max(axis=-1)
    valid = value >= params.black_value  # black borders and backgrounds are never tissue
    if params.method == "od":
        valid &= rgb.min(axis=-1) >= params.black_value
    px_um = mpp * ds
    # Black pixels score as background, so Otsu splits tissue from white and black alike.
    score = np.where(valid, score, 0.0)
    if not valid.any() or np.ptp(score) == 0:
        return TissueMask(np.zeros(score.shape, bool), ds, level, float("nan"), rgb)
    threshold = float(filters.threshold_otsu(score))
    mask = (score > threshold) & valid
    radius = max(1, round(params.close_um / px_um))
    footprint = morphology.disk(radius)
    mask = ndimage.binary_closing(np.pad(mask, radius), structure=footprint)[
        radius:-radius, radius:-radius
    ]
    mask = ndimage.binary_opening(mask, structure=morphology.disk(1))
    min_px = max(1, round(params.min_object_um2 / px_um**2))
    mask = morphology.remove_small_objects(mask, max_size=min_px)
    mask = ndimage.binary_fill_holes(mask)
    return TissueMask(mask.astype(bool), ds, level, threshold, rgb)
