"""The tile reader: a torch Dataset that cuts the patches of a tiles table out of a slide."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from histofuse.slides.wsi import best_level, open_slide


class TileDataset(Dataset):
    """Patches of one slide at the target size, as uint8 (H, W, 3) arrays.

    The slide is opened lazily in whichever process first reads an item, so DataLoader workers
    each hold their own OpenSlide handle. Each patch is read from the best pyramid level at or
    finer than the target µm/px, and resampled to ``patch_px`` with an antialiasing filter.
    Pixels outside the slide (transparent in OpenSlide) are white.

    Args:
        tiles: A tiles table (columns ``x0, y0, size0`` in level-0 px).
        meta: The tiles metadata (``slide``, ``mpp_x``, ``patch_px``).
    """

    def __init__(self, tiles: pd.DataFrame, meta: dict[str, Any]) -> None:
        self.slide_path = Path(meta["slide"])
        self.patch_px = int(meta["patch_px"])
        self.target_downsample = (
            meta["tiling"]["patch_um"] / meta["patch_px"] / float(meta["mpp_x"])
        )
        self.boxes = tiles[["x0", "y0", "size0"]].to_numpy(dtype=np.int64)
        self._slide = None

    def __len__(self) -> int:
        return len(self.boxes)

    def _open(self):
        if self._slide is None:
            self._slide = open_slide(self.slide_path)
            self._level = best_level(self._slide.level_downsamples, self.target_downsample)
            self._level_ds = float(self._slide.level_downsamples[self._level])
        return self._slide

    def __getitem__(self, i: int) -> np.ndarray:
        slide = self._open()
        x0, y0, size0 = (int(v) for v in self.boxes[i])
        size_l = max(1, math.ceil(size0 / self._level_ds))
        region = slide.read_region((x0, y0), self._level, (size_l, size_l))
        rgb = Image.new("RGB", region.size, (255, 255, 255))
        rgb.paste(region, mask=region.getchannel("A"))
        if rgb.size != (self.patch_px, self.patch_px):
            rgb = rgb.resize((self.patch_px, self.patch_px), Image.Resampling.LANCZOS)
        return np.array(rgb, dtype=np.uint8)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slide"] = None
        return state
