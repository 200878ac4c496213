# edgefpn: `make all` runs the whole pipeline on the default config; `make test` runs the tests.
# Both install what they need (uv + the locked environment in .venv) by themselves.

SHELL := /bin/bash
PYTHON ?= python3
CONFIG ?= configs/default.yaml
OUT ?= runs/default
ARGS ?=
NPROC ?= 1
UV_VERSION := 0.13.8

# Use uv from PATH when it is there, else bootstrap a private copy into .tools/ (pip from PyPI).
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
EDGEFPN := .venv/bin/edgefpn
STAGE_ARGS := --config $(CONFIG) --out $(OUT) $(ARGS)

.PHONY: all setup data train export quantize build check package run test test-shipped lint benchmark bench-zoo clean help

all: run ## data -> train -> export -> quantize -> build -> check on the default config

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --all-extras --python 3.11
	@touch $@

setup: .venv/.synced ## create .venv from uv.lock

data: setup ## make / validate the dataset
	$(EDGEFPN) data $(STAGE_ARGS)

train: setup ## train (or load model.weights); NPROC=N: N ranks on this machine through torchrun
	if [ "$(NPROC)" = 1 ]; then $(EDGEFPN) train $(STAGE_ARGS); \
	else .venv/bin/torchrun --standalone --nproc-per-node $(NPROC) -m edgefpn train $(STAGE_ARGS); fi

export: train ## export the static-shape ONNX
	$(EDGEFPN) export $(STAGE_ARGS)

quantize: export ## INT8 (QDQ ONNX, NNCF OpenVINO) and FP16 models
	$(EDGEFPN) quantize $(STAGE_ARGS)

build: quantize ## every engine this machine can build (OpenVINO; TensorRT where installed)
	$(EDGEFPN) build $(STAGE_ARGS)

check: build ## check every engine against the PyTorch reference
	$(EDGEFPN) check $(STAGE_ARGS)

package: check ## bundle.tar: the engines that passed check, with a verified manifest
	$(EDGEFPN) package $(STAGE_ARGS)

run: setup ## every stage in order
	$(EDGEFPN) run $(STAGE_ARGS)

benchmark: setup ## latency / throughput of every engine in the run dir (+ OpenVINO benchmark_app cross-check)
	$(EDGEFPN) benchmark $(STAGE_ARGS)

test: setup ## the test suite (< 10 minutes on 2 cores); torchvision's full-size layouts are in test-shipped
	.venv/bin/python -m pytest -q -m "not shipped" $(ARGS)

test-shipped: setup ## torchvision's full-size layouts: parity and every shipped config (~8 CPU-minutes; CI runs it after make test)
	EDGEFPN_ALL_TORCHVISION_CONFIGS=1 .venv/bin/python -m pytest -q -m shipped tests/models

bench-zoo: setup ## FPN vs AugFPN per detector, one training budget -> benchmarks/zoo.{md,json} (~20 min)
	.venv/bin/python benchmarks/zoo.py $(ARGS)

lint: setup ## ruff check and ruff format --check on edgefpn, tests and benchmarks; mypy on edgefpn
	.venv/bin/ruff check edgefpn tests benchmarks
	.venv/bin/ruff format --check edgefpn tests benchmarks
	.venv/bin/mypy

clean: ## remove runs/, the built-in dataset and pytest caches
	rm -rf runs data/synth .pytest_cache
