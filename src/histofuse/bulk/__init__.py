"""The slide-level bulk expression task.

One target vector per case (or slide), many tiles per slide, several slides per case:

* :mod:`histofuse.bulk.targets` reads bulk tables and slide-embedding files (CSV, parquet,
  ``.h5ad``) and transforms them;
* :mod:`histofuse.bulk.bags` turns cached tile features into slide bags, read in chunks of a
  memory budget, and mean-pools them;
* :mod:`histofuse.bulk.heads` has the released slide MLP (and the fusion strategies with the
  released ``512 → ReLU`` tail) and gated-attention MIL (ABMIL) trained on streamed bags;
* :mod:`histofuse.bulk.evaluate` has the case-level splits, the slide rows (scored per case)
  and the slide heads that the fold runner (:mod:`histofuse.evaluation.runner`) runs;

The workflow's bulk jobs are named in :mod:`histofuse.plan.bulk` (cheap, for parse time).
"""
