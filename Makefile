# Entry points behind the README's first commands. Everything runs in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup setup-runtime demo test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 first: it is a CPU build on local disk; a bare `torch` requirement would pull a
# CUDA build of several GB (DEVELOPERS.md). The extra keeps a range so GPU users get CUDA.
setup: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,dev]'

# The runtime alone (no torch): what a rig needs.
setup-runtime: $(BIN)/python
	$(BIN)/pip install -q -e .

# The main job on the built-in default: the daemon on the synthetic demo rig, a watcher that
# saves a contact sheet and a clip of the fused stream, then both stopped cleanly.
demo: setup-runtime
	$(BIN)/python scripts/demo.py --out out/demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
