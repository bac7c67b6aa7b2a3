# tlearn — run `make` (or `make help`) for the list of targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tlearn-installed

DATA ?= artifacts/datasets/digits
BACKBONE ?= efficientnet_lite0
CLASSIFIER ?= all
DATASET_NAME = $(notdir $(patsubst %/,%,$(basename $(DATA))))
STORE ?= artifacts/features/$(DATASET_NAME)__$(BACKBONE).h5
EXTRACT_ARGS ?=
TRAIN_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo extract train compare finetune test test-all lint bench clean

help: ## List the targets (this text)
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: DATA=$(DATA) BACKBONE=$(BACKBONE) CLASSIFIER=$(CLASSIFIER)"

install: $(STAMP) ## Create .venv and install tlearn with its dev tools (reused when present)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

extract: install ## Stage 1: features of DATA with BACKBONE into artifacts/features/
	$(BIN)/tlearn extract $(DATA) --backbone $(BACKBONE) --out $(STORE) $(EXTRACT_ARGS)

test: install ## Run the fast test suite
	$(BIN)/python -m pytest

test-all: install ## Run every test, slow ones included
	$(BIN)/python -m pytest -m ""

lint: install ## Check the code with ruff
	$(BIN)/ruff check .

bench: install ## Run the benchmarks (minutes; writes bench/results/*.json)
	$(BIN)/python bench/extract.py

clean: ## Remove generated outputs (artifacts/) and caches, keep .venv
	find artifacts -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache bench/results
