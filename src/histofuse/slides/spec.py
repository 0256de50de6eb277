"""The tiling spec (plain data, cheap to import), built from the config's ``tiling`` section."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from histofuse.slides.tissue import TissueParams


@dataclass(frozen=True)
class TilingSpec:
    """How patches are cut.

    Build it with :meth:`from_config`: its defaults are those of the config schema's ``tiling``
    section.

    Attributes:
        mode: ``spots`` (a patch centred on each spot of the expression file) or ``grid``
            (tiles over the detected tissue of a whole-slide image).
        patch_um: Side of a patch in µm (``tile_px`` = ``patch_um / target_mpp``).
        target_mpp: µm/px of the patches handed to encoders.
        stride_um: Grid step in µm; ``None`` means ``patch_um`` (non-overlapping tiles).
        min_tissue: Grid tiles with a smaller tissue fraction are dropped.
        spot_min_tissue: Spot patches with a smaller tissue fraction are dropped. ``0`` keeps
            every spot, as HEST does: the expression file already lists the spots under tissue
            (Space Ranger's ``in_tissue``) and HEST's ``dump_patches`` cuts a patch for each.
        tissue: Tissue detection settings.
    """

    mode: str
    patch_um: float
    target_mpp: float
    stride_um: float | None
    min_tissue: float
    spot_min_tissue: float
    tissue: TissueParams

    @classmethod
    def from_config(cls, doc: Mapping[str, Any] | None = None) -> TilingSpec:
        """Builds the spec of a ``tiling`` config section, validated, with the schema's defaults.

        The section's run policy (``on_error``, ``jobs``) is not part of the spec. Its numbers
        are floats, so ``112`` and ``112.0`` give one fingerprint; the ``tissue`` settings are
        kept as written.

        Args:
            doc: The section's document, or part of it (``None``: all defaults).

        Raises:
            HistofuseError: Naming the offending key.
        """
        from histofuse.settings import section

        t = section("tiling", doc)
        return cls(
            mode=t["mode"],
            patch_um=float(t["patch_um"]),
            target_mpp=float(t["target_mpp"]),
            stride_um=None if t["stride_um"] is None else float(t["stride_um"]),
            min_tissue=float(t["min_tissue"]),
            spot_min_tissue=float(t["spot_min_tissue"]),
            tissue=TissueParams(**t["tissue"]),
        )

    @property
    def patch_px(self) -> int:
        """Side of a patch in pixels at the target µm/px."""
        return round(self.patch_um / self.target_mpp)

    @property
    def step_um(self) -> float:
        """Grid step in µm."""
        return self.patch_um if self.stride_um is None else self.stride_um

    def to_dict(self) -> dict[str, object]:
        """Returns the spec as plain data."""
        return {**asdict(self), "patch_px": self.patch_px}

    def fingerprint(self) -> str:
        """Returns a short hash of the spec (part of every feature store's cache key)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
