"""Opening slides with OpenSlide and reading their µm/px, with clear errors."""

from __future__ import annotations

from collections.abc import Mapping
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


def best_level(downsamples: tuple[float, ...], target: float) -> int:
    """Returns the coarsest pyramid level whose downsample is at or finer than ``target``."""
    ok = [i for i, d in enumerate(downsamples) if d <= target * 1.001]
    return max(ok, key=lambda i: downsamples[i]) if ok else 0


@dataclass(frozen=True)
class Mpp:
    """Level-0 µm/px of a slide and where the value came from."""

    x: float
    y: float
    source: str


_UNIT_UM = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}


def _positive(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if v > 0 and v == v and v != float("inf") else None


def metadata_mpp(props: Mapping[str, str]) -> tuple[float, float, str] | None:
    """Returns ``(x, y, source)`` from slide properties, trying the most specific keys first.

    ``None`` when the properties hold no µm/px. A value is returned as written: whether it can
    be believed (a 72-dpi default tag, an implausible value) is :mod:`histofuse.slides.mpp`'s
    question.
    """
    mx = _positive(props.get(openslide.PROPERTY_NAME_MPP_X))
    my = _positive(props.get(openslide.PROPERTY_NAME_MPP_Y))
    if mx and my:
        return mx, my, "openslide.mpp"
    unit = _UNIT_UM.get(str(props.get("tiff.ResolutionUnit", "")).lower())
    rx, ry = _positive(props.get("tiff.XResolution")), _positive(props.get("tiff.YResolution"))
    if unit and rx and ry:
        return unit / rx, unit / ry, "tiff.resolution"
    v = _positive(props.get("aperio.MPP"))
    if v:
        return v, v, "aperio.MPP"
    return None


_metadata_mpp = metadata_mpp


def slide_mpp(
    slide: openslide.OpenSlide,
    path: str | Path,
    override: float | None = None,
    override_source: str = "override",
) -> Mpp:
    """Returns the level-0 µm/px: a per-sample override wins, else the slide's metadata.

    Metadata is tried in order: OpenSlide's ``openslide.mpp-x/y``, the TIFF ``XResolution`` /
    ``YResolution`` with a physical ``ResolutionUnit``, then vendor keys (``aperio.MPP``). The
    returned :class:`Mpp` records which one gave the value. Never guesses: a slide without µm/px
    and without an override is an error.

    Args:
        slide: The open slide.
        path: Its path, for messages.
        override: The sheet's ``mpp`` value for this sample, if any.
        override_source: Where the override came from, recorded as the source (``override``
            for a sheet's ``mpp`` column, ``hest-metadata`` for a HEST-1k metadata file).

    Raises:
        HistofuseError: If neither an override nor a metadata value exists.
    """
    if override is not None and override == override:
        if not override > 0:
            raise HistofuseError(f"slide {path}: the mpp override {override!r} must be positive")
        return Mpp(float(override), float(override), override_source or "override")
    found = metadata_mpp(slide.properties)
    if found is None:
        raise HistofuseError(
            f"slide {path} has no µm/px in its metadata (openslide.mpp-x/y, TIFF resolution, "
            "aperio.MPP); set the `mpp` column for this sample in the sample sheet"
        )
    return Mpp(*found)
