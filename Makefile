# The two commands (see README.md):
#   make book   - set up .venv, execute every chapter (lab profile), build the HTML book into _build/html
#   make test   - set up .venv, run the unit tests, then execute every chapter of the toc with nbmake (lab
#                 profile, in order), then every chapter again, each COLD in the stand-in clip profile
# Chapters are executed ONCE, into a scratch copy of the book ($(EXECUTED)); `make html` renders that copy
# with execution turned off. `.ci/run` is `make test` followed by `make html`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The executed scratch copy of the book. Not under _build: nbmake refuses to collect notebooks there.
EXECUTED := .lt_cache/book_executed
HTML := _build/html
# nbmake's limit per cell, in seconds
NB_TIMEOUT ?= 900
# Sphinx warnings (a broken citation or link) fail the build; `make html JB_FLAGS=` relaxes that.
JB_FLAGS ?= -W --keep-going

# Everything run by make sees these; override one on the command line, e.g. `make book LT_PROFILE=clip`.
export LT_PROFILE := lab
export LT_CACHE_DIR := $(CURDIR)/.lt_cache
# Notebooks keep their inline backend (MPLBACKEND=Agg would drop every figure); progress bars are off in the
# executed book (TQDM_DISABLE), on in Jupyter and Colab.
export TQDM_DISABLE := 1
export PYTHONHASHSEED := 0

# The install stamp is keyed on the content of pyproject.toml: changing the dependencies reinstalls, nothing
# else does (so torch is not reinstalled on every run).
STAMP := $(VENV)/.lt-install-$(firstword $(shell cksum < pyproject.toml))

.PHONY: help install book test unit execute execute-standin html check-html lab-checkpoints sync-colab jupyter clean clean-cache

help:
	@echo "make book        execute every chapter (lab profile) and build the HTML book into $(HTML)"
	@echo "make test        unit tests, then every chapter of the toc executed by nbmake"
	@echo "make html        build the HTML from the already executed chapters (no execution)"
	@echo "make check-html  open every page of the built HTML in headless Chromium, offline (screenshots too)"
	@echo "make jupyter     open the chapters in JupyterLab (same environment)"
	@echo "make lab-checkpoints  re-make the shipped pre-trained lab models after changing their code"
	@echo "make execute-standin-paper  every chapter cold on a fabricated Places-LT (the paper datasets' path)"
	@echo "make sync-colab  point the Colab badges at repository.url of _config.yml"
	@echo "make clean       remove _build;  make clean-cache  remove the results cache .lt_cache"

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found. Install Python 3.11, or run e.g. 'make $(MAKECMDGOALS) PYTHON=python3' with another Python >= 3.10." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): | $(PY)
	$(PY) -m pip install -e ".[book,dev]"
	rm -f $(VENV)/.lt-install-*
	touch $@

install: $(STAMP)

book: execute
	@$(MAKE) --no-print-directory html

test: unit execute execute-standin

# pytest exits 5 when it collects no test: that is not a failure of the frame.
unit: $(STAMP)
	rc=0; $(PY) -m pytest tests || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no unit tests collected"; exit 0; fi; exit $$rc

# Copy the book into $(EXECUTED) and execute its toc notebooks there, in toc order (they share .lt_cache).
execute: $(STAMP)
	$(PY) scripts/book_tools.py stage $(EXECUTED)
	nbs=$$($(PY) scripts/book_tools.py notebooks --root $(EXECUTED)); \
	rc=0; $(PY) -m pytest -p no:cacheprovider --nbmake --overwrite --nbmake-timeout=$(NB_TIMEOUT) \
		-v --durations=0 $$nbs || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no notebooks in the toc"; exit 0; fi; exit $$rc

# Every chapter opened first on a fresh runtime, in the clip profile's code path: tiny random-weight open_clip
# models and a fabricated CIFAR-100 archive (lt_utils/standin.py), each chapter with its own empty cache and data
# root. Also counts the runs each chapter triggers (checked against benchmarks/results/, which the time tables are
# computed from), and replays chapter 4 from an export -> import of its cache, training nothing (LT_CACHE_ONLY).
execute-standin: $(STAMP)
	$(PY) scripts/cold_book.py --out .lt_cache/standin --timeout $(NB_TIMEOUT) \
		--check-counts benchmarks/results/chapter_runs_clip-lite.json --replay book/04_backdoor_adjustment.ipynb

# Every chapter opened cold on the paper datasets' code path (an image-list dataset decoded once): a fabricated
# Places-LT in the real layout and the stand-in models (lt_utils/standin.py). About 6 min on 2 cores; not in `make
# test` (CI's budget), run it after a change to how chapters load data.
execute-standin-paper: $(STAMP)
	$(PY) scripts/cold_book.py --profile standin-places_lt --out .lt_cache/standin-places_lt --timeout $(NB_TIMEOUT)

html: $(STAMP)
	$(PY) scripts/book_tools.py check $(EXECUTED)
	rm -rf $(HTML)
	$(VENV)/bin/jupyter-book build $(EXECUTED) --path-output . --all $(JB_FLAGS)
	@echo "The book: file://$(CURDIR)/$(HTML)/index.html"

# Every page of the built book in headless Chromium (Debian's package, installed by the script when missing),
# with no network, at 1280 px: fails on error outputs, broken images or links, untypeset math, raw roles, sideways
# scrolling or JavaScript errors. Screenshots of every page go to _build/screenshots.
check-html: $(STAMP)
	$(PY) scripts/check_html.py --html $(HTML) --screenshots _build/screenshots

# The pre-trained lab models shipped in lt_utils/lab_checkpoints: pre-train all five with the current code (a few
# minutes) and replace the old files; commit the folder. tests/test_lab_checkpoints.py fails until this is run after
# an edit to the pre-training code (lab.PRETRAIN_MODULES) or recipe.
lab-checkpoints: $(STAMP)
	$(PY) -c "from lt_utils import lab; print(*lab.write_shipped_checkpoints(), sep='\n')"

sync-colab: $(STAMP)
	$(PY) scripts/book_tools.py sync-colab

jupyter: $(STAMP)
	$(VENV)/bin/jupyter lab book/

clean:
	rm -rf _build

clean-cache:
	rm -rf .lt_cache
