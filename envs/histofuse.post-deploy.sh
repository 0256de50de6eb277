#!/usr/bin/env bash
# Installs the histofuse package from the directory snakemake runs in, the repository root.
# Without dependencies: histofuse.yaml pins all of them at uv.lock's versions (make conda-env).
set -euo pipefail
python -m pip install --no-deps --no-build-isolation "${HISTOFUSE_SOURCE:-.}" || python -m pip install --no-deps "${HISTOFUSE_SOURCE:-.}"
