"""The tile reader: a torch Dataset that cuts the patches of a tiles table out of a slide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from histofuse.slides.tissue import rgba_to_rgb
from histofuse.slides.wsi import best_level, open_slide

__all__ = ["TileDataset", "best_level", "open_tile_source", "plan_blocks"]


def plan_blocks(
    boxes: np.ndarray, max_px: int = 4096, min_fill: float = 0.7, align: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Groups consecutive boxes into regions that are read once and cut.

    A box joins the current group while the group's bounding box stays within ``max_px`` on
    each side and the boxes cover at least ``min_fill`` of it (adjacent or overlapping tiles in
    a row do; a jump to the next row does not). A block never spans an index multiple of
    ``align``, so DataLoader batches whose size is a multiple of it never split a block between
    workers (each worker would read it again).

    Args:
        boxes: ``(N, 4)`` integer ``x, y, w, h`` in the read level's pixels.
        max_px: Largest side of a block.
        min_fill: Smallest covered fraction of a block's bounding box.
        align: Blocks start at every multiple of this index.

    Returns:
        The block index of every box and the ``(B, 4)`` blocks as ``x, y, w, h``.
    """
    block_of = np.zeros(len(boxes), dtype=np.int64)
    blocks: list[list[int]] = []
    cur: list[int] | None = None
    area = 0
    for i, (x, y, w, h) in enumerate(boxes.tolist()):
        if cur is not None and i % align:
            nx0, ny0 = min(cur[0], x), min(cur[1], y)
            nx1, ny1 = max(cur[0] + cur[2], x + w), max(cur[1] + cur[3], y + h)
            bw, bh = nx1 - nx0, ny1 - ny0
            if bw <= max_px and bh <= max_px and area + w * h >= min_fill * bw * bh:
                cur[:] = [nx0, ny0, bw, bh]
                area += w * h
                block_of[i] = len(blocks) - 1
                continue
        cur = [x, y, w, h]
        blocks.append(cur)
        area = w * h
        block_of[i] = len(blocks) - 1
    return block_of, np.asarray(blocks, dtype=np.int64).reshape(-1, 4)


class TileDataset(Dataset):
    """Patches of one slide at the target size, as uint8 (H, W, 3) arrays.

    The slide is opened lazily in whichever process first reads an item, so DataLoader workers
    each hold their own OpenSlide handle. Each patch is read from the best pyramid level at or
    finer than the target µm/px, and resampled to ``patch_px`` with an antialiasing (Lanczos)
    filter. Consecutive adjacent tiles are read as one region and cut (see :func:`plan_blocks`);
    the last region read is kept per process. Pixels outside the slide (transparent in
    OpenSlide) are white.

    Args:
        tiles: A tiles table (columns ``x0, y0, size0`` in level-0 px).
        meta: The tiles metadata (``slide``, ``mpp_x``, ``patch_px``, ``tiling``).
        block_px: Largest side of a region read at once (read-level px); 0 reads tile by tile.
    """

    def __init__(self, tiles: pd.DataFrame, meta: dict[str, Any], block_px: int = 4096) -> None:
        self.slide_path = Path(meta["slide"])
        self.patch_px = int(meta["patch_px"])
        self.target_downsample = (
            meta["tiling"]["patch_um"] / meta["patch_px"] / float(meta["mpp_x"])
        )
        self.boxes = tiles[["x0", "y0", "size0"]].to_numpy(dtype=np.int64)
        self.block_px = block_px
        self._slide = None
        self._plan: tuple[np.ndarray, np.ndarray] | None = None
        self._cached: tuple[int, Image.Image, np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    def _open(self):
        if self._slide is None:
            self._slide = open_slide(self.slide_path)
            self._level = best_level(self._slide.level_downsamples, self.target_downsample)
            self._level_ds = float(self._slide.level_downsamples[self._level])
            ds = self._level_ds
            x = np.floor(self.boxes[:, 0] / ds).astype(np.int64)
            y = np.floor(self.boxes[:, 1] / ds).astype(np.int64)
            s = np.maximum(1, np.ceil(self.boxes[:, 2] / ds)).astype(np.int64)
            self._lboxes = np.stack([x, y, s, s], axis=1)
            if self.block_px > 0:
                self._plan = plan_blocks(self._lboxes, self.block_px)
        return self._slide

    def _region(self, x: int, y: int, w: int, h: int) -> Image.Image:
        """Reads a region given in read-level px as an RGB image (transparent → white)."""
        ds = self._level_ds
        region = self._slide.read_region((round(x * ds), round(y * ds)), self._level, (w, h))
        if region.getchannel("A").getextrema()[0] == 255:
            return region.convert("RGB")
        return Image.fromarray(rgba_to_rgb(np.asarray(region)))

    def __getitem__(self, i: int) -> np.ndarray:
        self._open()
        x, y, w, h = (int(v) for v in self._lboxes[i])
        resize = (w, h) != (self.patch_px, self.patch_px)
        if self._plan is None:
            img, bx, by = self._region(x, y, w, h), x, y
        else:
            b = int(self._plan[0][i])
            if self._cached is None or self._cached[0] != b:
                self._cached = (b, self._region(*(int(v) for v in self._plan[1][b])), None)
            img = self._cached[1]
            bx, by = (int(v) for v in self._plan[1][b][:2])
        if resize:  # crop first: resampling a box of the block would see its neighbours
            if self._plan is not None:
                img = img.crop((x - bx, y - by, x - bx + w, y - by + h))
            out = img.resize((self.patch_px, self.patch_px), Image.Resampling.LANCZOS)
            return np.array(out, dtype=np.uint8)
        if self._plan is None:
            return np.array(img, dtype=np.uint8)
        if self._cached[2] is None:  # the block as an array, once; each tile is one slice copy
            self._cached = (self._cached[0], img, np.asarray(img))
        return self._cached[2][y - by : y - by + h, x - bx : x - bx + w].copy()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slide"] = None
        state["_cached"] = None
        return state


def open_tile_source(tiles: pd.DataFrame, meta: dict[str, Any]) -> Dataset:
    """Returns the dataset of a tiles table: pre-cut patches (``source: h5``) or a slide."""
    if meta.get("source") == "h5":
        from histofuse.slides.patches import H5PatchDataset

        return H5PatchDataset(tiles, meta)  # type: ignore[return-value]
    return TileDataset(tiles, meta)
