"""Heads on cached features, as scikit-learn estimators."""

from histofuse.heads.probes import HEADS, HESTAlphaCVProbe, HESTProbe, RidgeProbe, make_head

__all__ = ["HEADS", "HESTAlphaCVProbe", "HESTProbe", "RidgeProbe", "make_head"]
