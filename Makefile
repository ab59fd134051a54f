# bigdeep: `make run` runs the pipeline on the embedded data; `make test` runs the tests.
# Both set up .venv first from the pinned constraints (torch is the CPU build on disk here).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Quiet and offline by default (MLflow reads "true", not "1").
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MPLBACKEND := Agg
# Prefect's state (ephemeral server database, logs) stays in the project.
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: setup browser run test lint format ui servers servers-down bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"bigdeep needs Python 3.11, found {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and alone, pinned: a bare requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

run: setup
	@test -d .dvc || $(BIN)/dvc init -q
	$(BIN)/bigdeep run

test: setup browser
	$(BIN)/python -m pytest -q

# The browser test drives Debian's Chromium (never a downloaded browser).
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium; }

lint: setup
	$(BIN)/ruff check src flows tests
	$(BIN)/ruff format --check src flows tests

format: setup
	$(BIN)/ruff format src flows tests
	$(BIN)/ruff check --fix src flows tests

ui: setup
	$(BIN)/bigdeep ui

# Prefect + MLflow servers on 127.0.0.1 (SQLite; set BIGDEEP_POSTGRES_URL for PostgreSQL).
servers: setup
	$(BIN)/bigdeep servers up

servers-down: setup
	$(BIN)/bigdeep servers down

bench: setup
	$(BIN)/python tests/benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .prefect mlflow.db mlartifacts
