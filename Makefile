# Two entry points do all the set-up on a fresh machine:
#   make demo   - the main job (creates .venv on first use): segments a real LA MRI when
#                 ../shared/data/LA is beside the repository, else a synthetic phantom
#   make test   - the whole test suite (creates .venv on first use)
# Others: make demo-synthetic (the phantom even with the data), make screenshot (regenerates
# Resources/Screenshot.png and Resources/Panel.png from the phantom), make slicer SLICER=/path/to/Slicer (adds the
# module to that Slicer's settings), make bench, make lint, make clean.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-synthetic screenshot slicer test lint bench clean venv

venv: $(STAMP)

# torch is installed first and pinned to the CPU build that installs locally;
# a bare "torch" requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m CAMLSegmentationLib.cli.demo

demo-synthetic: $(STAMP)
	$(BIN)/python -m CAMLSegmentationLib.cli.demo --synthetic

# The Extensions Index / README pictures: the bundled model on the synthetic phantom (never patient data),
# and the module's panel after that run, rendered by the test harness on real Qt (offscreen).
screenshot: $(STAMP)
	$(BIN)/python -m CAMLSegmentationLib.cli.demo --synthetic --out build/screenshot
	$(BIN)/caml segment build/screenshot/synthetic_mri.nrrd build/screenshot/screenshot.seg.nrrd \
		--snapshot Resources/Screenshot.png --progress none
	PYTHONPATH=CAMLSegmentation:Testing/SlicerHarness QT_QPA_PLATFORM=offscreen \
		$(BIN)/python -m slicer_harness.picture Resources/Panel.png

slicer:
	@test -n "$(SLICER)" || { echo "usage: make slicer SLICER=/path/to/Slicer (the application or its folder)"; exit 2; }
	PYTHONPATH=CAMLSegmentation $(PYTHON) -m CAMLSegmentationLib.slicer.install "$(SLICER)"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_warm_worker.py

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
