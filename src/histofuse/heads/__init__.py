"""Heads on cached features, as scikit-learn estimators.

Imports are lazy so that :mod:`histofuse.heads.names` stays cheap at workflow parse time.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HEADS", "HESTAlphaCVProbe", "HESTProbe", "RidgeProbe", "make_head"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from histofuse.heads import probes

        return getattr(probes, name)
    raise AttributeError(f"module 'histofuse.heads' has no attribute {name!r}")
