"""Tissue detection on a bounded-size thumbnail of a slide.

The mask is computed on the coarsest level at or finer than ``mask_mpp`` µm/px when that level
has at most :data:`MAX_THUMBNAIL_PX` pixels. Otherwise (a flat slide without a pyramid, or a
level still too large) the thumbnail is built from that level read in blocks of bounded size,
each shrunk by an integer factor (area mean) and pasted in place, so memory stays bounded
whatever the slide's size; a slide read at more than 4× the mask's resolution gets a warning.
On the thumbnail, a per-pixel tissue score (HSV saturation, or optical density summed over RGB)
is thresholded with Otsu's method, near-black pixels (scanner borders, black backgrounds) are
dropped, then the mask is closed, opened, stripped of small objects and its holes are filled.
Tissue fractions of level-0 boxes are read from the mask's summed-area table.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_THUMBNAIL_PX = 1 << 23
"""Most pixels of the image tissue is detected on (8.4 M, e.g. 4096×2048; ~300 MB at peak)."""

BLOCK_PX = 2048
"""Side in read-level pixels (rounded to the shrink factor) of the blocks a thumbnail is built
from; a block is 16 MB of RGBA."""

PROGRESS_S = 10.0
"""Seconds between progress lines while a thumbnail is read in blocks."""

PYRAMID_FIX = "vips tiffsave in.tif out.tif --tile --pyramid --compression jpeg"


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
        rgb: The thumbnail's RGB image (for QC pictures), one pixel per mask pixel.
        warnings: Warnings about the slide (no pyramid), recorded in the tile stats.
    """

    mask: np.ndarray
    downsample: float
    level: int
    threshold: float
    rgb: np.ndarray
    warnings: tuple[str, ...] = ()

    def to_meta(self) -> dict[str, Any]:
        """The fields recorded in the tiles' metadata and stats (``warnings``: a list)."""
        return {
            "tissue_fraction": self.fraction,
            "tissue_level": self.level,
            "tissue_downsample": self.downsample,
            "tissue_threshold": self.threshold,
            "warnings": [*self.warnings],
        }

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


@dataclass(frozen=True)
class Thumbnail:
    """A slide image tissue is detected on.

    Attributes:
        rgb: ``(H, W, 3)`` uint8; pixel ``(r, c)`` is the mean of the read level's pixels
            ``[r·f, (r+1)·f) × [c·f, (c+1)·f)`` (those inside the slide).
        level: The pyramid level read.
        factor: The integer shrink factor ``f`` applied to that level (1: the level as is).
        downsample: Level-0 px per thumbnail pixel (the level's downsample × ``factor``).
        warnings: Why reading it was slow (a slide without a pyramid), if it was.
    """

    rgb: np.ndarray
    level: int
    factor: int
    downsample: float
    warnings: tuple[str, ...] = ()


def thumbnail_plan(
    downsamples: tuple[float, ...],
    dimensions: tuple[tuple[int, int], ...],
    target: float,
    max_px: int | None = None,
) -> tuple[int, int]:
    """Chooses the level to read and its integer shrink factor for a thumbnail.

    The level is the coarsest at or finer than ``target`` (level-0 px per thumbnail pixel). It
    is used as is when it has at most ``max_px`` pixels and is less than 4× finer than
    ``target`` (any 4×-step pyramid has such a level). Otherwise it is shrunk by the largest
    factor that does not pass ``target``, raised further until the result fits ``max_px``.

    Args:
        downsamples: The slide's level downsamples.
        dimensions: The slide's level sizes ``(width, height)``.
        target: Level-0 px per thumbnail pixel wanted.
        max_px: Most pixels of the thumbnail (``None``: :data:`MAX_THUMBNAIL_PX`).

    Returns:
        ``(level, factor)``.
    """
    from histofuse.slides.wsi import best_level

    max_px = MAX_THUMBNAIL_PX if max_px is None else max_px
    level = best_level(downsamples, target)
    w, h = dimensions[level]
    factor = max(1, math.floor(target / downsamples[level] + 1e-6))
    if w * h <= max_px and factor < 4:
        return level, 1
    while math.ceil(w / factor) * math.ceil(h / factor) > max_px:
        factor += 1
    return level, factor


def slide_rgb(slide: Any, level: int, factor: int = 1, name: str = "slide") -> np.ndarray:
    """Reads a pyramid level as uint8 RGB, shrunk by ``factor`` (area mean), on white.

    With ``factor`` 1 the whole level is read at once. Otherwise it is read in blocks of at most
    :data:`BLOCK_PX` (rounded to a multiple of ``factor``) pixels a side, each composited on
    white, shrunk and pasted, so memory stays bounded by the block and the result; progress is
    logged every :data:`PROGRESS_S` seconds.
    """
    w, h = slide.level_dimensions[level]
    if factor == 1:
        return rgba_to_rgb(np.asarray(slide.read_region((0, 0), level, (w, h))))
    from PIL import Image

    ds = float(slide.level_downsamples[level])
    side = factor * max(1, BLOCK_PX // factor)
    out = np.empty((math.ceil(h / factor), math.ceil(w / factor), 3), dtype=np.uint8)
    start = last = time.monotonic()
    for y in range(0, h, side):
        for x in range(0, w, side):
            bw, bh = min(side, w - x), min(side, h - y)
            rgba = slide.read_region((round(x * ds), round(y * ds)), level, (bw, bh))
            small = Image.fromarray(rgba_to_rgb(np.asarray(rgba))).reduce(factor)
            out[
                y // factor : y // factor + small.height, x // factor : x // factor + small.width
            ] = np.asarray(small)
        if time.monotonic() - last >= PROGRESS_S:
            last = time.monotonic()
            done = min(h, y + side) / h
            log.info(
                "tissue detection of %s: %.0f%% of %d×%d px read (%.0f s)",
                name, 100 * done, w, h, last - start,
            )  # fmt: skip
    return out


def read_thumbnail(slide: Any, target: float, name: str = "slide") -> Thumbnail:
    """Reads the thumbnail of an open slide at about ``target`` level-0 px per pixel.

    See :func:`thumbnail_plan` for the level and shrink factor. A level of more than
    :data:`MAX_THUMBNAIL_PX` pixels shrunk 4× or more means a large slide without a pyramid
    level near ``target``: that is warned about (logged before the slow read, and returned for
    the tile stats).

    Args:
        slide: An open OpenSlide slide.
        target: Level-0 px per thumbnail pixel wanted (``mask_mpp`` / slide µm/px).
        name: The slide's file, named in messages.
    """
    downsamples = tuple(float(d) for d in slide.level_downsamples)
    level, factor = thumbnail_plan(downsamples, tuple(slide.level_dimensions), target)
    warnings: tuple[str, ...] = ()
    w, h = slide.level_dimensions[level]
    if factor >= 4 and w * h > MAX_THUMBNAIL_PX:
        levels = ", ".join(f"{d:g}" for d in downsamples)
        warnings = (
            f"slide {name} has no pyramid level near the tissue mask's resolution (level "
            f"downsamples {levels}); tissue detection reads all {w}×{h} px of level {level} "
            "block by block, which is slow (minutes to hours for a whole slide); make a "
            f"pyramidal copy, e.g. `{PYRAMID_FIX}`, and point the sheet at it",
        )
        log.warning("%s", warnings[0])
    rgb = slide_rgb(slide, level, factor, name)
    return Thumbnail(rgb, level, factor, downsamples[level] * factor, warnings)


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
        # HSV saturation as skimage's rgb2hsv computes it (same floats), without its H and V
        # planes: max − min over max of the channels scaled to [0, 1].
        from skimage.util import img_as_float

        scaled = img_as_float(np.arange(256, dtype=np.uint8))
        v = scaled[rgb.max(axis=-1)]
        delta = v - scaled[rgb.min(axis=-1)]
        return np.divide(delta, v, out=np.zeros_like(v), where=delta != 0)
    if method == "od":
        od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)
        return od.sum(axis=-1)
    raise ValueError(f"unknown tissue method {method!r}; use saturation or od")


def detect_tissue(slide: Any, mpp: float, params: TissueParams, name: str = "slide") -> TissueMask:
    """Computes the tissue mask of an open slide on its thumbnail (see :func:`read_thumbnail`).

    Args:
        slide: An open OpenSlide slide.
        mpp: Its level-0 µm/px.
        params: Detection settings.
        name: The slide's file, named in messages.

    Returns:
        The mask at the thumbnail's scale, with the thumbnail's warnings.
    """
    thumb = read_thumbnail(slide, params.mask_mpp / mpp, name)
    mask, threshold = tissue_mask(thumb.rgb, mpp * thumb.downsample, params)
    return TissueMask(mask, thumb.downsample, thumb.level, threshold, thumb.rgb, thumb.warnings)


def tissue_mask(rgb: np.ndarray, px_um: float, params: TissueParams) -> tuple[np.ndarray, float]:
    """Computes the tissue mask of an RGB image of ``px_um`` µm/px.

    Returns:
        The boolean mask and the Otsu threshold of the tissue score (NaN if nothing is tissue).
    """
    from scipy import ndimage
    from skimage import filters, morphology

    score = tissue_score(rgb, params.method)
    value = rgb.max(axis=-1)
    valid = value >= params.black_value  # black borders and backgrounds are never tissue
    if params.method == "od":
        valid &= rgb.min(axis=-1) >= params.black_value
    # Black pixels score as background, so Otsu splits tissue from white and black alike.
    score = np.where(valid, score, 0.0)
    if not valid.any() or np.ptp(score) == 0:
        return np.zeros(score.shape, bool), float("nan")
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
    return mask.astype(bool), threshold
