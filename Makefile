# Entry points behind the README's first commands. Everything runs in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup setup-runtime demo test lint weights wheel-smoke clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 first: it is a CPU build on local disk; a bare `torch` requirement would pull a
# CUDA build of several GB. The extra keeps a range so GPU users get CUDA.
# The editable install maps models/, runtime/, export/, rig_config/ and weights/ to busref.*
# (pyproject.toml package-dir) through setuptools' import hook (the default "lenient" mode):
# "compat" mode cannot express a folder installed under another name, and "strict" mode's link
# tree is shadowed by the checkout's own busref/ folder whenever the repository root is on
# sys.path (python -m ... run from here), so neither would work from a checkout.
setup: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,dev]'

# The runtime alone (no torch): what a rig needs.
setup-runtime: $(BIN)/python
	$(BIN)/pip install -q -e '.[runtime]'

# The main job on the built-in default: the daemon on the synthetic demo rig, a watcher that
# saves a contact sheet and a clip of the fused stream, then both stopped cleanly.
demo: setup-runtime
	$(BIN)/python scripts/demo.py --out out/demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python scripts/lint_imports.py
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/python scripts/lint_imports.py

# The shipped weights from scratch (configs/recipes/shipped.yaml; hours of one CPU core, resumable: run it
# again to go on). The result lands in runs/rebuild/weights, beside the shipped weights/.
weights: setup
	$(BIN)/python scripts/rebuild_weights.py --out runs/rebuild

# The wheel as a rig installs it: fresh venv without torch, daemon on the packaged demo rig from
# outside the checkout, a subscriber receives frames (CI runs it after `make test`).
wheel-smoke: $(BIN)/python
	scripts/wheel_smoke.sh

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
