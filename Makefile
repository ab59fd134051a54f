# bigdeep: `make run` runs the pipeline on the embedded data; `make test` runs the tests.
# Both set up .venv first from the pinned constraints of the Python in use (3.11, 3.12 or 3.13:
# `make setup PYTHON=python3.12`); torch is the CPU build on disk here for 3.11.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# one pinned constraints file per supported Python: constraints.txt is 3.11's
CONSTRAINTS := $(if $(filter 3.11,$(PYVER)),constraints.txt,constraints-$(PYVER).txt)
VENDOR := .bigdeep/vendor
# Ports: `make ui PORT=5001`, `make servers MLFLOW_PORT=5001 PREFECT_PORT=4201`.
PORT ?= 5000
MLFLOW_PORT ?= 5000
PREFECT_PORT ?= 4200

# Quiet and offline by default (MLflow reads "true", not "1").
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MPLBACKEND := Agg
# Prefect's state (ephemeral server database, logs) stays in the project.
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: setup python-version browser run test test-fast lint format ui servers servers-down bench clean

setup: $(VENV)/.installed $(VENDOR)/plots.html

$(VENV)/.installed: pyproject.toml $(wildcard $(CONSTRAINTS)) | python-version
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and alone, pinned: a bare requirement would pull a newer build. Off 3.11 there is
	# no CPU wheel here: PyPI's torch 2.13.0 for 3.12/3.13 is the CUDA build (~4.5 GB with its libraries).
	$(BIN)/pip install -q -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	@touch $@

python-version:
	@test -f "$(CONSTRAINTS)" || { echo "bigdeep supports Python 3.11, 3.12 and 3.13;" \
	  "$(PYTHON) is $(or $(PYVER),not found): run make $(or $(MAKECMDGOALS),setup) PYTHON=python3.12" \
	  "(or python3.11, python3.13)" >&2; exit 1; }

# `dvc plots show` offline: vega, vega-lite, vega-embed (pinned) inlined into DVC's page template.
$(VENDOR)/plots.html: scripts/offline_plots.sh | $(VENV)/.installed
	scripts/offline_plots.sh $(VENDOR) $(BIN)/dvc

run: setup
	@test -d .dvc || $(BIN)/dvc init -q
	$(BIN)/bigdeep run

# Everything: tests/unit, tests/integration and tests/e2e (pyproject.toml's testpaths), two
# at a time (pytest-xdist): each test file on one worker (its module fixtures built once), the
# e2e files handed out first (tests/conftest.py). `make test TEST_WORKERS=0`: one at a time.
TEST_WORKERS ?= 2
test: setup browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The edit loop: tests/unit only (in-process, tiny data), without the tests marked slow;
# stops at the first failure.
test-fast: setup
	$(BIN)/python -m pytest tests/unit -m "not slow" -x -q

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
	$(BIN)/bigdeep ui --port $(PORT)

# Prefect + MLflow servers on 127.0.0.1 (SQLite; set BIGDEEP_POSTGRES_URL for PostgreSQL).
servers: setup
	$(BIN)/bigdeep servers up --mlflow-port $(MLFLOW_PORT) --prefect-port $(PREFECT_PORT)

servers-down: setup
	$(BIN)/bigdeep servers down

bench: setup
	$(BIN)/python tests/benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .prefect mlflow.db mlartifacts
