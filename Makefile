# The README's two commands: `make repro` (the demo pipeline) and `make test` (the test suite).
# Both create or reuse the virtual environment in .venv (torch 2.13.0 CPU installed first, so that no CUDA
# build is pulled in), install the package with its dependencies, then do their work.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PIP_QUIET ?= -q
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0
# The demo needs no model hub; set HF_HUB_OFFLINE=0 to let transformers download named models.
export HF_HUB_OFFLINE ?= 1

.PHONY: repro test install demo-corpus clean-work paper-dry-run

# --no-compile: pip would byte-compile every module of every package (~1 min of the install on 2 cores, most of it
# torch's); Python compiles the modules a run imports on first import instead, and caches them.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) --no-compile torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install $(PIP_QUIET) --no-compile -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import medusa, torch, papermill, dvc, opensmile, espeakng_loader, whisper, transformers" # fail here if an install failed
	touch $@

install: $(VENV)/.installed

# The demo corpus is rebuilt byte for byte from params.yaml (demo_corpus) when data/ is missing;
# data.dvc records its hash, so `dvc repro` accepts it unchanged.
data/Labels/labels_consensus.csv: | $(VENV)/.installed
	$(BIN)/medusa demo-corpus data

demo-corpus: data/Labels/labels_consensus.csv

# `dvc repro` with the members and Table 2's runs parallel.jobs at a time (medusa/pipeline/repro.py); the same outputs.
repro: $(VENV)/.installed demo-corpus
	$(BIN)/medusa repro

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# The paper preset (configs/paper.yaml) through DVC at a tiny size: every stage, member, ablation and ensemble of
# it, on a synthetic corpus with tiny stand-ins of its encoders (medusa/pipeline/dryrun.py; reports in build/paper-dry-run).
paper-dry-run: $(VENV)/.installed
	$(BIN)/python -m medusa.pipeline.dryrun

clean-work:
	rm -rf work
