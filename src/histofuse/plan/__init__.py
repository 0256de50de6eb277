"""What the workflow will run, computed once at Snakemake parse time (cheap: no torch, no slide).

* :mod:`histofuse.plan.names` — the grammar of feature-set names, parsed there and nowhere else;
* :mod:`histofuse.plan.core` — the sample table, embed shards and feature sets of a config.
"""

from histofuse.plan.core import Plan, assign_shards, feature_set_name, read_registry

__all__ = ["Plan", "assign_shards", "feature_set_name", "read_registry"]
