# The README's commands: `make demo`, `make test` and `make bench`. Everything they need is installed here.
SHELL := /bin/bash
VENV ?= .venv
# First interpreter in 3.10-3.12 that actually runs (pyenv shims may exist without a version).
PYTHON ?= $(shell for p in python3.11 python3.12 python3.10 python3; do \
	$$p -c 'import sys; sys.exit(not ((3,10) <= sys.version_info[:2] <= (3,12)))' >/dev/null 2>&1 \
	&& { echo $$p; break; }; done)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: need Python 3.10, 3.11 or 3.12 on PATH (vineyard 0.24.2 has no wheel for others)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $@

# The `bench` extra (matplotlib, for the plot) on top of the dev install.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,bench]"
	@touch $@

demo: $(STAMP)
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# Benchmarks (bench/): writes docs/bench.md and docs/bench.png; about 12 minutes on 2 cores.
# BENCH_MAX=256Mi caps the sizes, BENCH_QUICK=1 is a one-minute smoke run (report in artifacts/).
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

test: $(STAMP)
	$(BIN)/ruff check fluid_airflow dags tests scripts bench
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check fluid_airflow dags tests scripts bench
	$(BIN)/ruff format --check fluid_airflow dags tests scripts bench

clean:
	rm -rf $(VENV) .airflow .pytest_cache
