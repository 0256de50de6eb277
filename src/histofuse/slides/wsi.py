"""Opening slides with OpenSlide and reading their µm/px, with clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import openslide

from histofuse.errors import HistofuseError


def open_slide(path: str | Path) -> openslide.OpenSlide:
    """Opens a whole-slide image.

    Raises:
        HistofuseError: If the file is missing or OpenSlide cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise HistofuseError(f"slide {path} does not exist; check the `slide` column of the sheet")
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as exc:
        raise HistofuseError(
            f"slide {path} cannot be read by OpenSlide ({type(exc).__name__}: {exc}); "
            "the file is truncated, corrupt or not a slide format"
        ) from exc


@dataclass(frozen=True)
class Mpp:
    """Level-0 µm/px of a slide and where the value came from."""

    x: float
    y: float
    source: str


def slide_mpp(slide: openslide.OpenSlide, path: str | Path, override: float | None = None) -> Mpp:
    """Returns the level-0 µm/px: a per-sample override wins, else OpenSlide's properties.

    Never guesses: a slide without µm/px and without an override is an error.

    Args:
        slide: The open slide.
        path: Its path, for messages.
        override: The sheet's ``mpp`` value for this sample, if any.

    Raises:
        HistofuseError: If neither an override nor an mpp property exists.
    """
    if override is not None:
        return Mpp(float(override), float(override), "override")
    props = slide.properties
    try:
        mx = float(props[openslide.PROPERTY_NAME_MPP_X])
        my = float(props[openslide.PROPERTY_NAME_MPP_Y])
    except (KeyError, ValueError):
        raise HistofuseError(
            f"slide {path} has no µm/px in its metadata; set the `mpp` column for this sample "
            "in the sample sheet"
        ) from None
    if mx <= 0 or my <= 0:
        raise HistofuseError(f"slide {path} reports a non-positive µm/px ({mx}, {my})")
    return Mpp(mx, my, "openslide")
