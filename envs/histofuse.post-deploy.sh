#!/usr/bin/env bash
# Installs the histofuse package (without dependencies: the env provides them) from the
# directory snakemake runs in, the repository root.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation "${HISTOFUSE_SOURCE:-.}" || python -m pip install --no-deps "${HISTOFUSE_SOURCE:-.}"
