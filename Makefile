# fedbench: `make help` lists the targets.
.DEFAULT_GOAL := help
.PHONY: help install install-demo demo test test-all lint format bench leaderboard clean

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, by itself, so that pip does not pull a multi-GB CUDA build for
# the bare `torch` requirement; override e.g. `make install TORCH=torch` on a GPU machine.
TORCH ?= torch==2.13.0
TORCH_TAG := $(shell echo '$(TORCH)' | tr -c 'a-zA-Z0-9.\n' '_')
BASE := $(VENV)/.base-$(TORCH_TAG)
STAMP := $(VENV)/.installed-$(TORCH_TAG)

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# What running grids needs (the demo, the benchmarks): torch, then fedbench's own dependencies.
$(BASE): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e .
	@touch $@

# Tests and lint add the dev tools, Ray, pyarrow and psycopg on top.
$(STAMP): $(BASE)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP) ## create .venv and install fedbench with its dev tools (TORCH=... to choose torch)

install-demo: $(BASE) ## create .venv with only what running grids needs (no dev tools, Ray, pyarrow)

demo: $(BASE) ## run experiments/quickstart.toml, print the comparison, write the plot
	$(VENV)/bin/fedbench run experiments/quickstart.toml
	$(VENV)/bin/fedbench report --experiment quickstart --plot bits-vs-accuracy --target-accuracy 0.85

test: install ## run the test suite (everything but tests marked slow)
	$(PY) -m pytest -m "not slow" -q

test-all: install ## run every test, slow ones included
	$(PY) -m pytest -q

lint: install ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check fedbench tests benchmarks
	$(VENV)/bin/ruff format --check fedbench tests benchmarks
	$(VENV)/bin/mypy

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix fedbench tests benchmarks
	$(VENV)/bin/ruff format fedbench tests benchmarks

bench: $(BASE) ## speed (idle and loaded), CLI start-up, theory-scale, scale, pfl and GPU benchmarks
	@echo "== machine: $$(nproc) cores; $$(uptime)"
	$(PY) benchmarks/bench_round.py
	$(PY) benchmarks/bench_cli.py
	$(PY) benchmarks/bench_theory.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_reports.py  # 10^7 metric rows, built once into /tmp (about a minute)
	$(PY) benchmarks/bench_pfl.py  # needs `pip install -e '.[bench]'` (pfl); else says so
	PY=$(PY) bash benchmarks/gpu_check.sh  # CUDA path; says so and exits 0 without a GPU

# From an empty results/leaderboard.db (its own database): tune every method of every task of
# experiments/suite/ with `fedbench tune` under one budget, run the choices with 3 seeds, write
# results/leaderboard.md (and each task's chosen settings under results/leaderboard/).
leaderboard: $(BASE) ## tune + run the suite (~25 min on 2 cores), write results/leaderboard.md
	@$(PY) -c "import optuna" 2>/dev/null || $(PY) -m pip install --quiet -e ".[tune]"
	@echo "== machine: $$(nproc) cores; $$(uptime)"
	rm -f results/leaderboard.db results/leaderboard.db-wal results/leaderboard.db-shm
	$(PY) -m fedbench.leaderboard experiments/suite/suite.toml --db results/leaderboard.db \
		--out results/leaderboard.md --best-dir results/leaderboard

clean: ## remove the virtualenv, caches and results
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache results/*.db* results/plots
