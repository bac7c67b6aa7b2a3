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
FINETUNE_ARGS ?=
BUDGET ?= 20m
AUTO_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo extract train compare finetune auto datasets test test-all lint bench clean
DEFAULT_DATA := artifacts/datasets/digits

help: ## List the targets (this text)
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: DATA=$(DATA) BACKBONE=$(BACKBONE) CLASSIFIER=$(CLASSIFIER)"

install: $(STAMP) ## Create .venv and install tlearn with its dev tools (reused when present)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: install ## The main job offline: digits -> Lite0 features -> classifiers -> compare
	$(BIN)/tlearn demo

# The default DATA is exported from scikit-learn on first use (no download).
extract: install $(if $(filter $(DEFAULT_DATA),$(DATA)),$(DEFAULT_DATA)/.tlearn-dataset.json) ## Stage 1: features of DATA (folder or CSV) with BACKBONE
	$(BIN)/tlearn extract $(DATA) --backbone $(BACKBONE) --out $(STORE) $(EXTRACT_ARGS)

$(DEFAULT_DATA)/.tlearn-dataset.json: | install
	$(BIN)/tlearn datasets digits --dest $(DEFAULT_DATA)

train: install ## Stage 2: tune, fit and test CLASSIFIER (or all) on the store of DATA/BACKBONE
	$(BIN)/tlearn train $(STORE) --classifier $(CLASSIFIER) $(TRAIN_ARGS)

compare: install ## Table of every trained model (also written to artifacts/reports/)
	$(BIN)/tlearn compare

finetune: install ## Stage 3: fine-tune the backbone on the same split as the store (slow on CPU)
	$(BIN)/tlearn finetune $(STORE) $(FINETUNE_ARGS)

auto: install $(if $(filter $(DEFAULT_DATA),$(DATA)),$(DEFAULT_DATA)/.tlearn-dataset.json) ## The best backbone, recipe and classifier for DATA within BUDGET (e.g. 20m)
	$(BIN)/tlearn auto $(DATA) --budget $(BUDGET) $(AUTO_ARGS)

datasets: install ## List the datasets 'tlearn datasets fetch NAME' can download
	$(BIN)/tlearn datasets list

test: install ## Run the fast test suite
	$(BIN)/python -m pytest

test-all: install ## Run every test, slow ones included
	$(BIN)/python -m pytest -m ""

lint: install ## Check the code with ruff
	$(BIN)/ruff check .

bench: install ## Run the benchmarks (about two hours; needs ../shared; writes bench/results/)
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/calibration.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/backbones.py
	$(BIN)/python bench/compare_stages.py
	$(BIN)/python bench/engines.py

clean: ## Remove generated outputs (artifacts/) and caches, keep .venv
	find artifacts -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache
