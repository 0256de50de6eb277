"""Where the workflow writes its results: every result path pattern, and its builder.

The patterns are the rules' outputs (``{task}``, ``{shard}``, … are Snakemake wildcards); the
builders fill them in for the plan's lists of files. No other module spells a result path.
"""

from __future__ import annotations

#: Which shard each sample went to (sample id → shard id), kept across runs.
SHARD_REGISTRY = "results/shards.tsv"
#: Tile coordinates of one sample (``tiling.jobs: sample``), its QC thumbnail and its counts.
TILES = "results/tiles/{sample}.parquet"
TILES_QC = "results/tiles/{sample}.qc.png"
TILES_STATS = "results/tiles/{sample}.json"
#: Tile coordinates of a shard's samples, one parquet each (``tiling.jobs: shard``).
SHARD_TILES = "results/tiles/shards/{shard}"
#: An encoder's feature store of one shard, and its manifest (written last).
FEATURES = "results/features/{encoder}/{shard}.zarr"
FEATURES_MANIFEST = "results/features/{encoder}/{shard}.manifest.json"
#: The token cache of PEKA's tail mode, and its manifest.
TOKENS = "results/tokens/{encoder}/{shard}.zarr"
TOKENS_MANIFEST = "results/tokens/{encoder}/{shard}.manifest.json"
#: Scores and predictions of one spot-level job (``fit`` or ``peka``).
METRICS = "results/metrics/{task}/{features}/{head}.parquet"
PREDICTIONS = "results/predictions/{task}/{features}/{head}.parquet"
#: Scores and predictions of one slide-level bulk job; its report head is ``{agg}-{head}``.
BULK_METRICS = "results/bulk/metrics/{task}/{features}/{agg}-{head}.parquet"
BULK_PREDICTIONS = "results/bulk/predictions/{task}/{features}/{agg}-{head}.parquet"
#: The report's folder.
REPORT = "results/report"

_MANIFEST = ".manifest.json"
_STORE = ".zarr"


def tiles_qc(sample: str) -> str:
    """The QC thumbnail of a sample tiled on its own."""
    return TILES_QC.format(sample=sample)


def features(encoder: str, shard: str) -> str:
    """An encoder's feature store of a shard."""
    return FEATURES.format(encoder=encoder, shard=shard)


def features_manifest(encoder: str, shard: str) -> str:
    """The manifest of an encoder's feature store of a shard."""
    return FEATURES_MANIFEST.format(encoder=encoder, shard=shard)


def tokens(encoder: str, shard: str) -> str:
    """An encoder's token cache of a shard."""
    return TOKENS.format(encoder=encoder, shard=shard)


def manifest_of(store: str) -> str:
    """The manifest beside a store (``….zarr`` → ``….manifest.json``)."""
    return store.removesuffix(_STORE) + _MANIFEST


def store_of(manifest: str) -> str:
    """The store beside a manifest (``….manifest.json`` → ``….zarr``)."""
    return manifest.removesuffix(_MANIFEST) + _STORE


def metrics(task: str, features: str, head: str) -> str:
    """The metrics file of a spot-level job."""
    return METRICS.format(task=task, features=features, head=head)


def predictions(task: str, features: str, head: str) -> str:
    """The predictions file of a spot-level job."""
    return PREDICTIONS.format(task=task, features=features, head=head)


def bulk_metrics(task: str, features: str, agg: str, head: str) -> str:
    """The metrics file of a bulk job."""
    return BULK_METRICS.format(task=task, features=features, agg=agg, head=head)


def bulk_predictions(task: str, features: str, agg: str, head: str) -> str:
    """The predictions file of a bulk job."""
    return BULK_PREDICTIONS.format(task=task, features=features, agg=agg, head=head)


def report(name: str) -> str:
    """A file of the report (``summary.csv``, ``index.html``, …)."""
    return f"{REPORT}/{name}"
