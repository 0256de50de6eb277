"""histofuse: tile once, embed once, fit many heads on cached foundation-model features."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


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
