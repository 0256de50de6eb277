"""The tiling spec (plain data, cheap to import)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from histofuse.slides.tissue import TissueParams


@dataclass(frozen=True)
class TilingSpec:
    """How patches are cut.

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

    mode: str = "spots"
    patch_um: float = 112.0
    target_mpp: float = 0.5
    stride_um: float | None = None
    min_tissue: float = 0.5
    spot_min_tissue: float = 0.0
    tissue: TissueParams = field(default_factory=TissueParams)

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
