# Figures, tables and notebooks of semalign_lens.
#
#   make figures              every figure and table on the embedded pair into analysis/out/ (tens of minutes on 2 cores)
#   make figures FAST=1       the same pipeline on tiny random models (a smoke check; numbers meaningless)
#   make fig2 | fig45 | transfer | ablations     one of them
#   make notebooks            rewrite the notebooks whose cells changed in notebooks/build_notebooks.py (a code
#                             change drops the outputs) and execute all of them in fast mode (what CI runs)
#   make notebooks-executed   build and execute every notebook on the embedded pair, one at a time, in place, figures
#                             as PNG images: the committed notebooks (≈ 95 min wall, 62 CPU-min, on a shared 2-core
#                             machine; needs kaleido + Chromium)
#   make test-analysis        smoke tests of the figure scripts (tiny models)
#
# Variables: PYTHON (default python3), OUT (default analysis/out), STUDENT (default stdlib-student),
# TRANSFER_PROFILE (default table, the committed table's), TRANSFER_MINUTES (default 150).

PYTHON ?= python3
OUT ?= analysis/out
STUDENT ?= stdlib-student
TRANSFER_PROFILE ?= table
TRANSFER_MINUTES ?= 150
FAST ?=

FIGURE_ARGS = --out $(OUT) --student $(STUDENT) --transfer-profile $(TRANSFER_PROFILE) \
	--transfer-minutes $(TRANSFER_MINUTES) $(if $(filter 1,$(FAST)),--fast,)

.PHONY: figures fig2 fig45 transfer ablations notebooks notebooks-build notebooks-executed test-analysis

figures:
	HF_HUB_OFFLINE=1 $(PYTHON) analysis/make_figures.py $(FIGURE_ARGS)

fig2 fig45 transfer ablations:
	HF_HUB_OFFLINE=1 $(PYTHON) analysis/make_figures.py $(FIGURE_ARGS) --only $@

notebooks-build:
	$(PYTHON) notebooks/build_notebooks.py

notebooks: notebooks-build
	SEMALIGN_FAST=1 HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q tests/app/test_notebooks.py

notebooks-executed:
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(PYTHON) notebooks/execute_notebooks.py

test-analysis:
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q tests/app/test_analysis_scripts.py
