"""What the workflow will run, computed once at Snakemake parse time (cheap: no torch, no slide).

The rules in ``workflow/rules/*.smk`` only wire files to CLI verbs; they look everything up here:

* :mod:`histofuse.plan.names` — the grammar of feature-set names, parsed there and nowhere else;
* :mod:`histofuse.plan.paths` — every result path pattern, and its builder;
* :mod:`histofuse.plan.core` — :class:`Plan`: the sample table, embed shards (append-only, kept in
  a registry), feature sets, the ``fit`` jobs and the inputs and params of each;
* :mod:`histofuse.plan.bulk` — the slide-level bulk jobs (``Plan.bulk``);
* :mod:`histofuse.plan.peka` — the PEKA jobs and the caches they read (``Plan.peka``);
* :mod:`histofuse.plan.demo` — the demo cohort's samples and files, from its layout.
"""

from histofuse.plan.core import Plan, assign_shards, read_registry

__all__ = ["Plan", "assign_shards", "read_registry"]
