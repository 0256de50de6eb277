"""The tiling spec (plain data, cheap to import)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TilingSpec:
    """How patches are cut.

    Attributes:
        mode: ``spots`` (a patch centred on each spot of the expression file).
        patch_um: Side of a patch in µm.
        target_mpp: µm/px of the patches handed to encoders.
    """

    mode: str = "spots"
    patch_um: float = 112.0
    target_mpp: float = 0.5

    @property
    def patch_px(self) -> int:
        """Side of a patch in pixels at the target µm/px."""
        return round(self.patch_um / self.target_mpp)

    def to_dict(self) -> dict[str, object]:
        """Returns the spec as plain data."""
        return {**asdict(self), "patch_px": self.patch_px}

    def fingerprint(self) -> str:
        """Returns a short hash of the spec (part of every feature store's cache key)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
