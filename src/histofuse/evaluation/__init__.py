"""Evaluation: the fold runner every fitting stage runs through, and its parts.

* :mod:`histofuse.evaluation.runner` — the fold loop, gene selection and the output files;
* :mod:`histofuse.evaluation.spots` — spot rows (samples, counts, failed and non-finite spots);
* :mod:`histofuse.evaluation.features` — cached feature sets and samples failed at tiling;
* :mod:`histofuse.evaluation.scoring` — metric columns, protocols and predictions tables;
* :mod:`histofuse.evaluation.splits` and :mod:`histofuse.evaluation.metrics` — splits, metrics.
"""
