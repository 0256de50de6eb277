"""histofuse: tile once, embed once, fit many heads on cached foundation-model features."""

from __future__ import annotations

__version__ = "0.1.0"
