"""Writes envs/histofuse.yaml, the conda environment of every rule, from uv.lock.

The pip section is ``uv export --frozen --no-dev --no-hashes --no-emit-project``: every runtime
dependency of the package, direct or not, at the version uv.lock pins (with the lock's
environment markers, which pip evaluates). The package itself is installed without dependencies
by ``histofuse.post-deploy.sh``, so the environment holds exactly what ``make env`` syncs into
``.venv``, less the dev group.

The requirements are written into the environment file rather than referenced with ``-r``:
Snakemake copies the file before creating the environment (a relative path would no longer
resolve) and keys the environment on the file's content (a new lock must rebuild it).

Usage (``make conda-env`` runs it)::

    python envs/export.py [--uv PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "envs" / "histofuse.yaml"
#: The environment's Python: the oldest the package supports (``requires-python``).
PYTHON = "3.11"
EXPORT = ("export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project")
HEADER = """\
# The environment of every rule under `snakemake --sdm conda`, generated from uv.lock by
# `make conda-env` (envs/export.py): do not edit by hand. The pip section pins every runtime
# dependency at the lock's version; histofuse.post-deploy.sh then installs the histofuse package
# itself, without dependencies, from the directory snakemake runs in (the repository root).
"""


def export_requirements(uv: str = "uv") -> list[str]:
    """The lock's runtime requirements, one ``name==version[ ; marker]`` per entry."""
    text = subprocess.run(
        [uv, *EXPORT, "--no-header", "--no-annotate"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] not in "#-"]


def render(requirements: list[str]) -> str:
    """The environment file for ``requirements`` (entries with a marker are quoted)."""
    lines = [
        HEADER.rstrip("\n"),
        "channels:",
        "  - conda-forge",
        "  - nodefaults",
        "dependencies:",
        f"  - python={PYTHON}",
        "  - pip",
        "  - pip:",
    ]
    lines += [f"      - {json.dumps(r) if ';' in r else r}" for r in requirements]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Regenerates ``envs/histofuse.yaml``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", default="uv", help="the uv executable (default: uv on PATH)")
    args = parser.parse_args()
    ENV_FILE.write_text(render(export_requirements(args.uv)))
    print(f"wrote {ENV_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
