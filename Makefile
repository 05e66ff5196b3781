# Two commands matter: `make demo` (the detector, live) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
SOURCE ?=
export SOURCE

.PHONY: demo test lint bench system-deps

$(VENV)/.edge-installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@ $(VENV)/.edge-installed

system-deps:
	scripts/install-system-deps

## make demo [SOURCE=recording.wav]: broker + daemon on the demo model + live detection feed
demo: $(VENV)/.edge-installed
	scripts/demo

## make test: install what the tests need, then run them all
test: system-deps $(VENV)/.dev-installed
	$(PY) -m pytest -q

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.dev-installed
	$(PY) bench/run_all.py
