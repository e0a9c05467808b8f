# mmattn: the only entry points a newcomer needs.
#   make env         create or refresh the environment (idempotent; first run ~15 min: mmcv builds)
#   make test        env + the test suite
#   make demo        env + train and evaluate a toy detector, pictures in work_dirs/demo/
#   make bench       env + op benchmarks (compiled vs reference)
#   make cuda-check  build the CUDA kernels against a CUDA torch and check their registration
SHELL := /bin/bash
MMATTN_VENV ?= $(HOME)/.cache/mmattn/venv
export MMATTN_VENV
PY := $(MMATTN_VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env test demo bench cuda-check clean

env:
	@bash tools/env.sh

test: env
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: env
	$(PY) tools/demo.py

bench: env
	$(PY) tools/analysis_tools/benchmark_ops.py

cuda-check:
	@bash tools/cuda_check.sh

clean:
	rm -rf build work_dirs mmattn/_C*.so
