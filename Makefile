# Two entry points do all the set-up on a fresh machine:
#   make demo   - the main job (creates .venv on first use)
#   make test   - the whole test suite (creates .venv on first use)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean venv

venv: $(STAMP)

# torch is installed first and pinned to the CPU build that installs locally;
# a bare "torch" requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m CAMLSegmentationLib.demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_inference.py

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
