# Veilbill — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
FUZZ_SECONDS ?= 60
FUZZ_ARGS ?=
FUZZ_TARGETS := fuzz_pan fuzz_envelope fuzz_stripe_signature fuzz_standard_webhooks

export VEILBILL_DATABASE_URL ?= sqlite:///var/veilbill.db
export VEILBILL_KEYRING_PATH ?= var/keyring.json
export VEILBILL_PUBLIC_URL ?= http://$(HOST):$(PORT)

.PHONY: help install run test lint typecheck check bench fuzz clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "Python 3.11 is required ($(PYTHON) is not)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,sandbox]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install Veilbill with its dev tools

run: install ## Start the service (SQLite, gateway sandbox on :8420) with a demo tenant; prints keys and URLs
	@mkdir -p var
	@$(BIN)/veilbill db upgrade
	@$(BIN)/veilbill keys init --if-missing
	@$(BIN)/veilbill demo --if-empty
	@$(BIN)/veilbill serve --host $(HOST) --port $(PORT) --sandbox

test: install ## Run the whole test suite (SQLite, PostgreSQL, Chromium)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install ## ruff (lint and format check) and the import-direction contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install ## mypy --strict
	$(BIN)/mypy

check: lint typecheck test ## Everything CI runs

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,sandbox,bench]'
	@touch $@

bench: $(VENV)/.bench-installed ## Every benchmark, side by side with its baseline (docs/benchmarks.md; --only picks cases)
	$(BIN)/python -m bench.crypto_bench
	$(BIN)/python -m bench.anonymize_bench
	$(BIN)/python -m bench.export_bench
	$(BIN)/python -m bench.load_bench
	$(BIN)/python -m bench.privacy_tax_bench

fuzz: install ## Atheris (coverage-guided) fuzzing, FUZZ_SECONDS (60) per target; corpora, crashes in var/fuzz/
	@status=0; for target in $(FUZZ_TARGETS); do \
	  echo "== $$target: $(FUZZ_SECONDS) s"; \
	  $(BIN)/python -m tests.fuzz.$$target -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ_ARGS) \
	    || { status=1; echo "== $$target FAILED: the input is in var/fuzz/$${target#fuzz_}/crash-*"; }; \
	done; exit $$status

clean: ## Remove the virtualenv, caches and local data (var/: database and keyring!)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var *.egg-info
