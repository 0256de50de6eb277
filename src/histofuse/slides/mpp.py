"""Whether a slide's µm/px can be believed, checked before it is tiled.

A wrong µm/px tiles without complaint and yields patches of the wrong field of view, so the
implausible cases stop the sample with an error naming the slide and the sheet's ``mpp`` column:

- a resolution tag holding the 72- or 96-dpi default that image tools (PIL, ImageJ, exports)
  write when nothing is known (352.78 or 264.58 µm/px): no real µm/px at all;
- a µm/px outside ``tiling.mpp_range`` (scanners write 0.1–1 µm/px);
- a slide coarser than ``tiling.target_mpp`` by more than ``tiling.max_upsample``: every source
  pixel would be stretched over several patch pixels.

A sheet override that disagrees with the slide's own metadata by more than
``tiling.mpp_disagreement`` is allowed (the override wins) but recorded as a warning.

A sample whose expression is a Space Ranger ``outs/`` folder has a third value: the spot pitch
(:func:`spot_pitch_mpp`). It is used when there is neither an override nor metadata (or only a
default resolution tag), and is recorded as ``mpp_spot_pitch``; when the µm/px used differs from
it by more than ``tiling.mpp_disagreement`` a warning is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histofuse.errors import HistofuseError
from histofuse.slides.wsi import Mpp, metadata_mpp, open_slide, slide_mpp

#: µm/px of the resolution tags image tools write by default: 72 and 96 dots per inch.
DEFAULT_DPI_MPP = {72: 25400 / 72, 96: 25400 / 96}
#: Relative tolerance of a default tag (28.35 px/cm for 72 dpi gives 352.73 µm/px, not 352.78).
_DPI_TOLERANCE = 0.002
_FIX = "set the sample's `mpp` column in the sample sheet"


@dataclass(frozen=True)
class MppLimits:
    """The tile-time plausibility limits of the ``tiling`` section (defaults: the schema's).

    Attributes:
        low: Smallest plausible level-0 µm/px (``tiling.mpp_range[0]``).
        high: Largest plausible level-0 µm/px (``tiling.mpp_range[1]``).
        max_upsample: Largest level-0 µm/px ÷ target µm/px allowed (``None``: no limit).
        disagreement: Relative difference of an override from the slide's own µm/px above which
            a warning is recorded.
        min_spots_on_tissue: Smallest accepted fraction of spot centres on detected tissue
            (``tiling.min_spots_on_tissue``; checked by
            :func:`histofuse.slides.tiling.check_spot_placement`).
    """

    low: float
    high: float
    max_upsample: float | None
    disagreement: float
    min_spots_on_tissue: float

    @classmethod
    def from_config(cls, doc: Mapping[str, Any] | None = None) -> MppLimits:
        """Builds the limits of a ``tiling`` config section, with the schema's defaults.

        Raises:
            HistofuseError: Naming the offending key.
        """
        from histofuse.settings import section

        t = section("tiling", doc)
        low, high = (float(v) for v in t["mpp_range"])
        if not low < high:
            raise HistofuseError(
                f"config `tiling.mpp_range` = {t['mpp_range']} must be [low, high]"
            )
        up = t["max_upsample"]
        return cls(
            low,
            high,
            None if up is None else float(up),
            float(t["mpp_disagreement"]),
            float(t["min_spots_on_tissue"]),
        )


@dataclass(frozen=True)
class MppCheck:
    """The µm/px a slide is tiled at, what its own metadata says, and the warnings.

    Attributes:
        mpp: The µm/px used (the override, else the metadata) and its source.
        slide_mpp: The slide's own metadata µm/px (x), or ``None`` (none, or a default tag).
        upsample: Level-0 µm/px ÷ target µm/px: above 1, each slide pixel spans that many
            patch pixels.
        warnings: Messages recorded in the tile stats.
        spot_pitch_mpp: The µm/px of the Space Ranger spot pitch, or ``None`` (not Space Ranger).
    """

    mpp: Mpp
    slide_mpp: float | None
    upsample: float
    warnings: tuple[str, ...]
    spot_pitch_mpp: float | None = None

    def to_meta(self) -> dict[str, Any]:
        """The fields recorded in the tiles' metadata and stats."""
        return {
            "mpp_slide": self.slide_mpp,
            "mpp_spot_pitch": self.spot_pitch_mpp,
            "upsample": self.upsample,
            "warnings": [*self.warnings],
        }


def spot_pitch_mpp(expression: str | Path | None) -> Mpp | None:
    """The µm/px a Space Ranger ``outs/`` folder's spot pitch gives; ``None`` for an ``.h5ad``.

    Raises:
        HistofuseError: If the folder's tissue positions are missing or cannot give a pitch.
    """
    from histofuse.data.spaceranger import MPP_SOURCE, is_outs, pitch_mpp

    if not is_outs(expression):
        return None
    value = pitch_mpp(expression)  # type: ignore[arg-type]
    return Mpp(value, value, MPP_SOURCE)


def default_dpi(mpp: float) -> int | None:
    """The default dots per inch (72, 96) whose µm/px ``mpp`` is, or ``None``."""
    for dpi, value in DEFAULT_DPI_MPP.items():
        if abs(mpp / value - 1) <= _DPI_TOLERANCE:
            return dpi
    return None


def check_mpp(
    slide_path: str | Path,
    target_mpp: float,
    limits: MppLimits,
    override: float | None = None,
    override_source: str = "override",
    fallback: Mpp | None = None,
) -> MppCheck:
    """Reads a slide's µm/px as tiling will and refuses implausible values.

    Args:
        slide_path: The slide.
        target_mpp: µm/px of the patches (``tiling.target_mpp``).
        limits: The plausibility limits.
        override: The sheet's ``mpp`` for this sample, if any.
        override_source: Where ``override`` came from.
        fallback: A µm/px measured from the data (the Space Ranger spot pitch), used when there
            is no override and the slide has no believable µm/px of its own; the value used is
            checked against it.

    Returns:
        The µm/px used, the slide's own, the upsampling factor and any warnings.

    Raises:
        HistofuseError: Naming the slide, the value, its source and the key to set, when the
            metadata is a default resolution tag, the value is outside ``tiling.mpp_range``, or
            the slide would be upsampled beyond ``tiling.max_upsample``.
    """
    has_override = override is not None and override == override
    with open_slide(slide_path) as slide:
        own = metadata_mpp(slide.properties)
        if own is not None and default_dpi(own[0]):
            if not has_override and fallback is None:
                raise HistofuseError(
                    f"slide {slide_path}: its µm/px {own[0]:.2f} (from {own[2]}) is the "
                    f"{default_dpi(own[0])}-dpi default resolution tag image tools write, not a "
                    f"scanned µm/px; {_FIX}"
                )
            own = None
        if not has_override and own is None and fallback is not None:
            override, override_source = fallback.x, fallback.source
        mpp = slide_mpp(slide, slide_path, override, override_source)
    _check_range(slide_path, mpp, limits)
    upsample = mpp.x / target_mpp
    if limits.max_upsample is not None and upsample > limits.max_upsample:
        raise HistofuseError(
            f"slide {slide_path}: at {mpp.x:.4g} µm/px (from {mpp.source}) tiling at "
            f"`tiling.target_mpp` {target_mpp:g} would upsample it {upsample:.3g}× (more than "
            f"`tiling.max_upsample` {limits.max_upsample:g}); check the sample's `mpp` column in "
            "the sample sheet, or raise `tiling.max_upsample` if this is meant"
        )
    warnings = []
    if has_override and own is not None and abs(mpp.x / own[0] - 1) > limits.disagreement:
        warnings.append(
            f"slide {slide_path}: the sheet's `mpp` {mpp.x:.4g} ({mpp.source}) differs from the "
            f"slide's own {own[0]:.4g} µm/px (from {own[2]}) by {abs(mpp.x / own[0] - 1):.0%}; "
            "the sheet's value is used"
        )
    warnings += _fallback_warnings(slide_path, mpp, fallback, limits.disagreement)
    pitch = None if fallback is None else fallback.x
    return MppCheck(mpp, None if own is None else own[0], upsample, tuple(warnings), pitch)


def _fallback_warnings(
    slide_path: str | Path, mpp: Mpp, fallback: Mpp | None, disagreement: float
) -> list[str]:
    """A warning when the µm/px used differs from the fallback by more than ``disagreement``."""
    if fallback is None or mpp == fallback or abs(mpp.x / fallback.x - 1) <= disagreement:
        return []
    return [
        f"slide {slide_path}: its µm/px {mpp.x:.4g} (from {mpp.source}) differs from the "
        f"{fallback.x:.4g} µm/px of the spot pitch ({fallback.source}) by "
        f"{abs(mpp.x / fallback.x - 1):.0%}; the {mpp.source} value is used: check that the slide "
        "is the full-resolution image Space Ranger was given, or set the sample's `mpp` column"
    ]


def _check_range(slide_path: str | Path, mpp: Mpp, limits: MppLimits) -> None:
    for value in (mpp.x, mpp.y):
        if not limits.low <= value <= limits.high:
            raise HistofuseError(
                f"slide {slide_path}: µm/px {value:.4g} (from {mpp.source}) is outside the "
                f"plausible range {limits.low:g}–{limits.high:g} µm/px; {_FIX}, or widen "
                "`tiling.mpp_range` if the value is right"
            )
