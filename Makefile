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
# A second venv with pandas 3 (pandas 3 installed first, then the package: pip must keep it)
# and the optional torch extra (CUDA wheels from PyPI: ~2.5 min, ~5 GB, so not in .venv).
# Rebuilt only when the pandas version or the project's requirements change.
PANDAS3 ?= 3.1.1
VENV3 ?= .venv-pandas3
BIN3 := $(VENV3)/bin
STAMP3 := $(VENV3)/.installed-pandas-$(PANDAS3)
# The tests run on pandas 3 too: values through the backend, pandas, polars, the DAGs; and torch,
# which only this venv has.
PANDAS3_TESTS ?= tests/test_install.py tests/test_backend.py tests/test_frames.py tests/test_inline.py tests/test_polars.py \
	tests/test_dags.py tests/test_torch.py

.PHONY: venv venv-pandas3 demo test lint bench clean controlplane

venv: $(STAMP)

venv-pandas3: $(STAMP3)

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: need Python 3.10, 3.11 or 3.12 on PATH (vineyard 0.24.2 has no wheel for others)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	# The newest setuptools on purpose: it has no pkg_resources, which vineyard imports
	# (fluid_airflow/_vineyard_import.py handles that); the tests run against it.
	$(BIN)/python -m pip install --quiet --upgrade setuptools
	@touch $@

$(STAMP3): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: need Python 3.10, 3.11 or 3.12 on PATH"; exit 1; }
	rm -rf $(VENV3)
	$(PYTHON) -m venv $(VENV3)
	$(BIN3)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN3)/python -m pip install --quiet "pandas==$(PANDAS3)"
	grep -v '^pandas==' constraints.txt > $(VENV3)/constraints.txt
	$(BIN3)/python -m pip install --quiet -c $(VENV3)/constraints.txt -e ".[dev,torch]"
	$(BIN3)/python -m pip install --quiet --upgrade setuptools  # as in $(VENV): the newest
	$(BIN3)/python -c 'import pandas, sys; v = pandas.__version__; sys.exit(0 if v == "$(PANDAS3)" else f"pip replaced pandas $(PANDAS3) by {v}")'
	@touch $@

# The `bench` extra (matplotlib, for the plot) and torch (the torch_tensor kind) on top of the dev install.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,bench,torch]"
	@touch $@

demo: $(STAMP)
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# Benchmarks (bench/): writes docs/bench.md, bench.png and bench.json; about 23 minutes on 2 cores.
# BENCH_MAX=256Mi caps the sizes, BENCH_QUICK=1 is a one-minute smoke run (report in artifacts/).
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

# The control-plane tests need the Go-built Kubernetes + Fluid binaries (cached outside the checkout:
# ~16-28 min the first time on 2 cores, under a second after). scripts/test.sh runs them beside the
# unit tests and then the pandas 3 tests, then the deployment tests alone.
test: $(STAMP) $(STAMP3) controlplane
	$(BIN)/ruff check fluid_airflow dags tests scripts bench
	$(BIN)/mypy
	bash scripts/test.sh $(BIN)/python $(BIN3)/python $(PANDAS3_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check fluid_airflow dags tests scripts bench
	$(BIN)/ruff format --check fluid_airflow dags tests scripts bench
	$(BIN)/mypy

# The real Kubernetes control plane + Fluid controllers for the tests (docs/controlplane.md): built from Go
# modules once per version pin into ${FLUID_AIRFLOW_CACHE:-~/.cache/fluid-airflow}/controlplane/<key>/.
controlplane:
	bash scripts/controlplane/build.sh

clean:
	rm -rf $(VENV) $(VENV3) .airflow .pytest_cache
