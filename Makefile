# Two commands: `make demo` and `make test`. Both create .venv from uv.lock when it is missing.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
UV_VERSION := 0.13.9
PYTHON ?= python3
UV := .tools/bin/uv
VENV := .venv
STAMP := $(VENV)/.synced
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=
SNAKEMAKE_ARGS ?=

.PHONY: demo test test-fast bench lint fmt clean env conda-env

demo: $(STAMP)  ## Run the demo workflow (cohort generated on first run) → results/report/
	snakemake --cores all $(SNAKEMAKE_ARGS)

test: $(STAMP)  ## Run the whole test suite
	pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## Tests without the slow ones
	pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)  ## Run every benchmark → results/bench/<name>.json
	python benchmarks/run.py

lint: $(STAMP)  ## ruff and snakemake --lint
	ruff check src tests benchmarks
	ruff format --check src tests benchmarks
	snakemake --lint

fmt: $(STAMP)
	ruff format src tests benchmarks
	ruff check --fix src tests benchmarks

env: $(STAMP)

conda-env: | $(UV)  ## Regenerate envs/histofuse.yaml (the rules' conda env) from uv.lock
	$(PYTHON) envs/export.py --uv $(UV)

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

clean:
	rm -rf results logs .snakemake
