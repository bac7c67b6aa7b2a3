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
.PHONY: help install install-gpu demo extract train compare finetune auto datasets test test-all lint bench bench-gpu-wheels bench-gpu clean docs docs-serve
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

install-gpu: ## Like install, plus the gpu extra: TensorFlow and JAX with their CUDA libraries
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,gpu]'
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

docs: install ## Build the documentation site strictly into artifacts/site (offline)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: install ## Serve the documentation site at http://127.0.0.1:8000/, rebuilt on edits
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: install ## Run the benchmarks (about two hours; needs ../shared; writes bench/results/)
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/calibration.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/backbones.py
	$(BIN)/python bench/compare_stages.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/backends.py

# A lent GPU machine has torch and jax with CUDA and no internet: Keras and its small
# needs travel as wheels in .whl (git-ignored), see bench/gpu.py.
GPU_WHEELS := keras==3.15.1 namex==0.1.0 optree==0.18.0

bench-gpu-wheels: ## Download the wheels bench/gpu.py needs on a GPU machine into .whl
	@x=$$(git rev-parse --git-path info/exclude); grep -qx '/.whl/' $$x 2>/dev/null || echo /.whl/ >> $$x
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

bench-gpu: ## On the GPU machine: install .whl, run bench/gpu.py (under 8 minutes)
	python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target /tmp/site .whl/*.whl
	PYTHONPATH=/tmp/site:$(CURDIR) PYTHONUNBUFFERED=1 python3 bench/gpu.py $(if $(OUT),--out $(OUT)/gpu.json)

clean: ## Remove generated outputs (artifacts/) and caches, keep .venv
	find artifacts -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache
