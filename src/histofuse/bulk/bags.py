"""Slide bags of cached tile features, read in chunks that fit a memory budget.

A bag is every tile of one slide (one sample of the cache). Features are read only through
:func:`histofuse.cache.open_features`; a feature set of several encoders is the per-tile
concatenation of their features (the encoders must cover the same tiles, in the same order, as
stores embedded from the same tile tables do). A bag is never materialised beyond
``budget_rows`` tiles at once: readers iterate over row chunks.

Whole slides are also kept in memory between reads while they fit in the budget (a trainer
passes over the same slides every epoch); a slide larger than the budget is never kept and is
read chunk by chunk on every pass. Tile features held by a reader thus stay under twice
``memory_mb`` (the kept slides plus one chunk in flight).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histofuse.errors import HistofuseError


def budget_rows(memory_mb: float, dim: int) -> int:
    """Tiles of ``dim`` float32 features that fit in ``memory_mb`` MiB (at least one)."""
    if memory_mb <= 0:
        raise HistofuseError(f"bulk `memory_mb` must be positive, got {memory_mb}")
    return max(1, int(memory_mb * (1 << 20) // (4 * max(1, dim))))


@dataclass
class SlideBags:
    """The bags of a feature set, one per slide, lazily read from the cache.

    Attributes:
        encoders: Encoder names in concatenation order (sorted).
        blocks: Feature width of each encoder.
        ranges: Slide → (start, stop) rows in every encoder's table.
        memory_mb: Budget of one read, in MiB of float32 features.
        max_rows_read: The largest number of tiles read at once so far (for measurement).
    """

    encoders: list[str]
    blocks: list[int]
    ranges: dict[str, tuple[int, int]]
    memory_mb: float = 256.0
    max_rows_read: int = 0
    _arrays: list = field(default_factory=list, repr=False)
    _kept: dict = field(default_factory=dict, repr=False)
    _kept_bytes: int = 0

    @classmethod
    def open(
        cls,
        stores: Sequence[str | Path],
        memory_mb: float = 256.0,
        cache_keys: Mapping[str, Mapping[str, str]] | None = None,
    ) -> SlideBags:
        """Opens the stores of one feature set (shards of one or more encoders).

        Args:
            stores: Store paths.
            memory_mb: Budget of one read, in MiB of float32 features.
            cache_keys: The configured key of each encoder; if given, every store must carry it
                (see :func:`histofuse.evaluation.features.stores_by_encoder`).

        Raises:
            HistofuseError: If the encoders do not cover the same tiles of every slide, or a
                store's key differs from the configured one.
        """
        from histofuse.cache import READ_BLOCK_BYTES, open_features
        from histofuse.evaluation.features import stores_by_encoder

        by_encoder = stores_by_encoder(stores, cache_keys)
        encoders = sorted(by_encoder)
        arrays, blocks, ranges, ref = [], [], None, None
        for name in encoders:
            # reading any row of a dask block reads all of it: keep blocks within the budget
            block_bytes = min(READ_BLOCK_BYTES, int(memory_mb * (1 << 20)) // 2)
            table = open_features(by_encoder[name], block_bytes=block_bytes)
            samples = table.index["sample"].to_numpy()
            bounds = np.flatnonzero(np.r_[True, samples[1:] != samples[:-1], True])
            mine = {str(samples[a]): (int(a), int(b)) for a, b in itertools.pairwise(bounds)}
            if len(mine) != len(bounds) - 1:
                raise HistofuseError(f"encoder {name}: a slide's tiles are split in the cache")
            coords = table.index[["x", "y"]].to_numpy()
            if ranges is None:
                ranges, ref = mine, (coords, encoders[0])
            else:
                same = mine.keys() == ranges.keys() and all(
                    np.array_equal(coords[slice(*mine[s])], ref[0][slice(*ranges[s])]) for s in mine
                )
                if not same:
                    raise HistofuseError(
                        f"encoder {name} does not cover the same tiles as {ref[1]}; re-embed both "
                        "from the same tiles"
                    )
                ranges = mine
            arrays.append(table.features)
            blocks.append(int(table.features.shape[1]))
        if ranges is None:
            raise HistofuseError("no feature stores given for the bulk task")
        return cls(encoders, blocks, ranges, memory_mb=memory_mb, _arrays=arrays)

    @property
    def dim(self) -> int:
        """Width of the concatenated features."""
        return sum(self.blocks)

    @property
    def chunk_rows(self) -> int:
        """Tiles read at once under the memory budget."""
        return budget_rows(self.memory_mb, self.dim)

    def size(self, slide: str) -> int:
        """Number of tiles of a slide."""
        start, stop = self._range(slide)
        return stop - start

    def _range(self, slide: str) -> tuple[int, int]:
        try:
            return self.ranges[slide]
        except KeyError:
            raise HistofuseError(
                f"slide {slide!r} has no cached tile features; embed it or drop it from the bulk "
                "table"
            ) from None

    def chunks(self, slide: str) -> Iterator[np.ndarray]:
        """Yields the slide's features (rows, dim) as float32, ``chunk_rows`` tiles at a time."""
        if slide in self._kept:
            yield self._kept[slide]
            return
        start, stop = self._range(slide)
        step = self.chunk_rows
        nbytes = (stop - start) * self.dim * 4
        if stop - start <= step and self._kept_bytes + nbytes <= self.memory_mb * (1 << 20):
            self.max_rows_read = max(self.max_rows_read, stop - start)
            parts = [np.asarray(arr[start:stop].compute(), np.float32) for arr in self._arrays]
            self._kept[slide] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            self._kept_bytes += nbytes
            yield self._kept[slide]
            return
        for a in range(start, stop, step):
            b = min(stop, a + step)
            self.max_rows_read = max(self.max_rows_read, b - a)
            parts = [np.asarray(arr[a:b].compute(), dtype=np.float32) for arr in self._arrays]
            yield parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def mean_pool(self, slides: Sequence[str]) -> np.ndarray:
        """Mean of every slide's tile features (slides, dim), accumulated chunk by chunk."""
        out = np.zeros((len(slides), self.dim), dtype=np.float64)
        for i, slide in enumerate(slides):
            n = self.size(slide)
            if n == 0:
                raise HistofuseError(f"slide {slide!r} has no tiles in the cache; re-tile it")
            for chunk in self.chunks(slide):
                out[i] += chunk.sum(axis=0, dtype=np.float64)
            out[i] /= n
        return out

    def moments(self, slides: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and standard deviation over all tiles of the slides (streamed)."""
        n, s1, s2 = 0, np.zeros(self.dim), np.zeros(self.dim)
        for slide in slides:
            for chunk in self.chunks(slide):
                c = chunk.astype(np.float64)
                n += len(c)
                s1 += c.sum(axis=0)
                s2 += (c * c).sum(axis=0)
        mean = s1 / max(n, 1)
        std = np.sqrt(np.maximum(s2 / max(n, 1) - mean * mean, 0.0))
        return mean, np.where(std > 0, std, 1.0)
