"""histofuse: tile once, embed once, fit many heads on cached foundation-model features.

Reading a cached encoder as a library::

    from histofuse import open_features
    table = open_features("results/features/uni/0000.zarr")  # or a list of shard stores
    X, obs = table.load(), table.index  # numpy (tiles, dim) and pandas (sample, barcode, x, y)

``import histofuse`` stays light: :func:`open_features` and :class:`FeatureTable` are imported
from :mod:`histofuse.cache` (numpy, pandas, dask, zarr) only when first used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

_LAZY = {"open_features": "histofuse.cache", "FeatureTable": "histofuse.cache"}
__all__ = ["FeatureTable", "__version__", "open_features", "workflow_dir"]


def __getattr__(name: str) -> Any:
    """Imports a public name's module on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'histofuse' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def workflow_dir() -> Path:
    """The folder holding the pipeline's ``Snakefile`` (with ``workflow/``, ``config/``, ``envs/``).

    In an installed wheel it is the package data ``histofuse/workflow``; in a checkout (an
    editable install, or ``PYTHONPATH=src``) it is the repository root.

    Raises:
        FileNotFoundError: If neither holds a ``Snakefile`` (a broken install).
    """
    here = Path(__file__).resolve().parent
    for folder in (here / "workflow", here.parents[1]):
        if (folder / "Snakefile").is_file() and (folder / "workflow" / "rules").is_dir():
            return folder
    raise FileNotFoundError(f"no Snakefile in {here / 'workflow'} or {here.parents[1]}")
