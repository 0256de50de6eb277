"""The Zarr feature cache: one store per (encoder, shard), one group per sample.

Layout of ``results/features/{encoder}/{shard}.zarr`` (Zarr v3)::

    /                      attrs["histofuse"]: provenance (encoder spec, weights sha256, tiling
                           spec, dtype, cache key, package versions, timings, samples)
    /{sample}/features     (N, D) float16 (default) or float32, uncompressed: chunks of whole
                           rows, up to 16 chunks to a shard file
    /{sample}/coords       (N, 2) int64 patch centres, level-0 px (x, y), uncompressed
    /{sample}/barcodes     (N,) variable-length UTF-8, spot tasks

with its manifest ``{shard}.manifest.json`` beside it. Modules: :mod:`~histofuse.cache.writer`
(writing a store, its lock), :mod:`~histofuse.cache.manifest` (the manifest and provenance),
:mod:`~histofuse.cache.reader` (opening stores as one lazy array),
:mod:`~histofuse.cache.chunks` (reading rows straight from chunk files, checksums verified) and
:mod:`~histofuse.cache.keys` (a store's recorded key against the configured one). This
package names the public API.
"""

from histofuse.cache.keys import check_store_key, expected_key
from histofuse.cache.manifest import manifest_path, read_manifest, read_provenance
from histofuse.cache.reader import READ_BLOCK_BYTES, FeatureTable, open_features
from histofuse.cache.writer import FeatureStoreWriter

__all__ = [
    "READ_BLOCK_BYTES",
    "FeatureStoreWriter",
    "FeatureTable",
    "check_store_key",
    "expected_key",
    "manifest_path",
    "open_features",
    "read_manifest",
    "read_provenance",
]
