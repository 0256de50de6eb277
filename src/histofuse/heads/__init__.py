"""Heads on cached features, as scikit-learn estimators."""

from histofuse.heads.probes import HEADS, HESTProbe, make_head

__all__ = ["HEADS", "HESTProbe", "make_head"]
