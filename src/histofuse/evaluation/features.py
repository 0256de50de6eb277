"""A task's cached tile features, and the samples the tile step recorded as failed.

Features come from the cache only (never from slides): one or more encoders' stores, whose
per-tile features are concatenated. A sample that could not be tiled (``tiling.on_error:
record``) has no features; its store's provenance says why (``failed_samples``), and every
stage leaves it out of the task.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

log = logging.getLogger(__name__)


def load_feature_set(
    stores: Sequence[str | Path],
    samples: list[str],
    with_blocks: bool = False,
    memory_budget_mb: float | None = None,
    cache_keys: Mapping[str, Mapping[str, str]] | None = None,
) -> Any:
    """Loads and concatenates (along features) the cached features of one or more encoders.

    Args:
        stores: Store paths; grouped by the encoder recorded in each store's provenance.
        samples: Samples to keep.
        with_blocks: Also return the per-encoder feature widths.
        memory_budget_mb: If the kept features, as float32, exceed this many MiB, they are not
            read: a :class:`~histofuse.heads.streaming.LazyFeatures` view is returned instead.
            Without a budget the samples are read whole, straight from their chunks (no dask).
        cache_keys: The configured key of each encoder (see :func:`stores_by_encoder`).

    Returns:
        Features (N, sum of dims) as float32 (or a lazy view of them), the index (``sample,
        barcode, x, y``), the encoder names in concatenation order (sorted), and with
        ``with_blocks`` the feature width of each encoder in that order (so a fusion head can
        split ``X``).

    Raises:
        HistofuseError: If the encoders do not cover the same tiles, or a store's key differs
            from the configured one.
    """
    by_encoder = stores_by_encoder(stores, cache_keys)
    encoders = sorted(by_encoder)
    read = _read_aligned(by_encoder, encoders, samples) if memory_budget_mb is None else None
    if read is not None:
        x, index, widths = read
        return (x, index, encoders, widths) if with_blocks else (x, index, encoders)

    from histofuse.cache import READ_BLOCK_BYTES
    from histofuse.heads.streaming import BATCH_SHARE, LazyFeatures, exceeds_budget

    # Under a budget, rows are read in small batches, and a read decodes its whole dask block.
    block_bytes = (
        READ_BLOCK_BYTES
        if memory_budget_mb is None
        else int(memory_budget_mb * 2**20 / BATCH_SHARE)
    )
    index, arrays, rows = _aligned_tables(by_encoder, encoders, samples, block_bytes)
    widths = [int(a.shape[1]) for a in arrays]
    x: Any = LazyFeatures(arrays, rows)
    if exceeds_budget(len(index), sum(widths), memory_budget_mb):
        log.info(
            "features of %d tiles × %d exceed the %s MiB budget: streaming them",
            len(index),
            sum(widths),
            memory_budget_mb,
        )
    else:
        x = x.read()
    if with_blocks:
        return x, index, encoders, widths
    return x, index, encoders


def stores_by_encoder(
    stores: Sequence[str | Path], cache_keys: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, list[Path]]:
    """Groups store paths by the encoder named in each store's provenance.

    Args:
        stores: Store paths.
        cache_keys: Encoder → the key parts the config asks for
            (:func:`histofuse.cache.expected_key`); if given, every store must carry them.

    Raises:
        HistofuseError: If a store is of an encoder not in ``cache_keys``, or its key differs.
    """
    from histofuse.cache import check_store_key, read_provenance

    by_encoder: dict[str, list[Path]] = {}
    for store in stores:
        provenance = read_provenance(store)
        name = provenance["encoder"]["name"]
        if cache_keys is not None:
            if name not in cache_keys:
                raise HistofuseError(
                    f"feature store {store} holds features of encoder {name}, which this job "
                    f"does not read ({', '.join(sorted(cache_keys))}); check the job's stores"
                )
            check_store_key(store, provenance, dict(cache_keys[name]))
        by_encoder.setdefault(name, []).append(Path(store))
    return by_encoder


def _aligned_tables(
    by_encoder: dict[str, list[Path]], encoders: list[str], samples: list[str], block_bytes: int
) -> tuple[pd.DataFrame, list[Any], list[np.ndarray]]:
    """Each encoder's features and the rows of the samples' tiles, in the first one's order."""
    from histofuse.cache import open_features

    index, ref, arrays, rows = None, None, [], []
    for name in encoders:
        table = open_features(by_encoder[name], block_bytes=block_bytes)
        keep = table.index["sample"].isin(samples).to_numpy()
        idx = table.index[keep].reset_index(drop=True)
        r = np.flatnonzero(keep)
        key = _tile_key(name, idx)
        if index is None:
            index, ref = idx, key
        else:
            r = r[_positions(name, key, ref, encoders[0])]
        arrays.append(table.features)
        rows.append(r)
    return index, arrays, rows


def _read_aligned(
    by_encoder: dict[str, list[Path]], encoders: list[str], samples: list[str]
) -> tuple[np.ndarray, pd.DataFrame, list[int]] | None:
    """The samples' features of every encoder read whole, as float32, in the first one's order.

    The kept rows are whole samples, so each encoder's samples are read straight from their
    chunks (:func:`histofuse.cache.reader.read_samples`) and only a later encoder whose tiles
    are in another order is reordered, in memory. The values equal those of
    :meth:`~histofuse.heads.streaming.LazyFeatures.read` (float16 to float32 is exact).

    Returns:
        Features (N, sum of widths), the index and the widths; None when an encoder's stores
        hold none of the samples (the dask path then gives its result).
    """
    from histofuse.cache.reader import read_samples

    index, ref, blocks = None, None, []
    for name in encoders:
        read = read_samples(by_encoder[name], samples)
        if read is None:
            return None
        idx, x = read
        key = _tile_key(name, idx)
        if index is None:
            index, ref = idx, key
        else:
            pos = _positions(name, key, ref, encoders[0])
            if not np.array_equal(pos, np.arange(len(pos))):
                x = x[pos]
        blocks.append(x)
    widths = [int(x.shape[1]) for x in blocks]
    if len(blocks) == 1:
        return blocks[0].astype(np.float32, copy=False), index, widths
    return np.concatenate(blocks, axis=1, dtype=np.float32), index, widths


def _tile_key(name: str, index: pd.DataFrame) -> pd.MultiIndex:
    """The (sample, barcode) key of an encoder's tiles.

    Raises:
        HistofuseError: If a tile is there twice.
    """
    key = pd.MultiIndex.from_frame(index[["sample", "barcode"]])
    if key.duplicated().any():
        raise HistofuseError(f"encoder {name}: duplicate (sample, barcode) tiles in the cache")
    return key


def _positions(name: str, key: pd.MultiIndex, ref: pd.MultiIndex, first: str) -> np.ndarray:
    """Where each tile of the first encoder (``ref``) is among encoder ``name``'s tiles.

    Raises:
        HistofuseError: If the two encoders do not cover the same tiles.
    """
    pos = key.get_indexer(ref)
    if (pos < 0).any() or len(key) != len(ref):
        raise HistofuseError(
            f"encoder {name} does not cover the same tiles as {first}; re-embed both "
            "from the same tiles"
        )
    return pos


def recorded_failures(stores: Sequence[str | Path], samples: list[str]) -> dict[str, str]:
    """Samples of the task that the tile step recorded as failed, with the reason.

    Such a sample (``tiling.on_error: record``) has no features in any store; its store's
    provenance says why (``failed_samples``).
    """
    from histofuse.cache import read_provenance

    out: dict[str, str] = {}
    for store in stores:
        for sample, reason in read_provenance(store).get("failed_samples", {}).items():
            if sample in samples:
                out[sample] = f"not tiled: {reason}"
    return out


def recorded_mpp(stores: Sequence[str | Path]) -> dict[str, list[float]]:
    """Sample → the ``[x, y]`` µm/px its tiles were cut at, as the stores record it."""
    from histofuse.cache import read_provenance

    out: dict[str, list[float]] = {}
    for store in stores:
        out.update(read_provenance(store).get("sample_mpp", {}))
    return out


def leave_out_failed(
    task_name: str, stores: Sequence[str | Path], samples: list[str]
) -> tuple[list[str], dict[str, str]]:
    """The samples without those recorded as failed at tiling, and the failed ones' reasons.

    Each failed sample is logged once; the reasons go into the metrics file's metadata
    (``missing_samples``), from which the report lists them.
    """
    failed = recorded_failures(stores, samples)
    for sample, reason in failed.items():
        log.warning("task %s: sample %s left out: %s", task_name, sample, reason)
    return [s for s in samples if s not in failed], failed
