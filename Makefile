# Two commands matter: `make demo` (the detector, live) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
SOURCE ?=
export SOURCE

.PHONY: demo test lint bench system-deps demo-model bench-model arm64-check

# `make demo` installs a regular copy, as from a wheel (an editable install of this flat layout
# makes setuptools print a warning block), reinstalled when the edge code or the demo model
# changes; once `make test` has made the install editable, it stays editable.
$(VENV)/.edge-installed: pyproject.toml $(wildcard edge/*.py edge/*/*.py) models/demo/manifest.json
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -f $(VENV)/.dev-installed ]; then $(PY) -m pip install -q -e .; else $(PY) -m pip install -q .; fi
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

## make test [TEST_JOBS=2]: install what the tests need, check style and types, then run the whole suite
## in TEST_JOBS processes (pytest-xdist). Many tests wait on a real broker, a real sound server or
## a child daemon, so two processes halve the time even on two cores; TEST_JOBS=0 runs it in one.
## --dist worksteal hands each process a run of whole files (module fixtures mostly built once)
## and, unlike loadfile, carries on when a process crashes: the crashed test fails, the rest run.
TEST_JOBS ?= 2
test: system-deps $(VENV)/.dev-installed lint
	$(PY) -m pytest -q $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist worksteal)

## make lint: ruff and mypy (edge/ and trainer/, default mode), as CI runs them
lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## make bench: daemon (latency, CPU, RSS at hop 0.5/1 s) and publisher benchmarks on the demo model
bench: $(VENV)/.dev-installed
	$(PY) bench/bench_daemon.py
	$(PY) bench/bench_publisher.py

## make demo-model [RUN=runs/nips4b-full]: rebuild models/demo from a training run
## (thresholds, export + parity, INT8 calibrated on train windows, AP check, bundle, benchmark)
demo-model: $(VENV)/.dev-installed
	scripts/build-demo-model $(RUN)

## make bench-model CHECKPOINT=run/best.pt FP32=run/demo-export/model_fp32.onnx: PyTorch vs ONNX FP32 vs INT8
bench-model: $(VENV)/.dev-installed
	$(PY) bench/bench_model.py $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(FP32),--fp32 $(FP32))

## sudo make arm64-check: the edge install + demo model on arm64 Debian under qemu, compared with this host
## (cached arm64 root in ARM64_ROOT; slow under emulation; not part of make test). See docs/arm64.md
arm64-check: $(VENV)/.edge-installed
	HOST_PY=$(abspath $(PY)) scripts/arm64-check
