"""PEKA: adapters distilled from a transcriptomic teacher, trained on cached encoder outputs.

* :mod:`histofuse.peka.teacher` — teacher embeddings per spot (a file, or the built-in PCA of
  log-normalised expression), k-means clusters and the frozen teacher classifier.
* :mod:`histofuse.peka.adapters` — PEFT adapters (MiSS/Bone, LoRA, AdaLoRA, HRA) on a frozen
  projection of cached features or on the cached last blocks of a ViT, the translate MLP and
  the distillation loss.
* :mod:`histofuse.peka.tokens` — the token cache feeding the last ``k`` blocks (tail mode).
* :mod:`histofuse.peka.run` — the fit job: per fold, teacher → adapter → student features →
  the same heads, metrics and predictions files as every other feature set.

The workflow's PEKA jobs are planned in :mod:`histofuse.plan.peka` (cheap, for parse time).
"""
