"""The Zarr feature cache: one store per (encoder, shard), one group per sample."""

from histofuse.cache.store import (
    FeatureStoreWriter,
    FeatureTable,
    open_features,
    read_manifest,
)

__all__ = ["FeatureStoreWriter", "FeatureTable", "open_features", "read_manifest"]
