# mmattn: the only entry points a newcomer needs.
#   make env         create or refresh the environment (idempotent; first run ~15 min: mmcv builds)
#   make test        env + the test suite
#   make demo        env + train and evaluate a toy detector, pictures in work_dirs/demo/
#   make bench       env + op benchmarks (compiled vs reference)
#   make cuda-check  build the CUDA kernels against a CUDA torch and check their registration
#   make mutation    mutation testing of the Python modules (not in CI; ~25 min, survivors listed)
#   make wheel       a wheel with the compiled ops for the environment's torch, in dist/
#                    (FORCE_CUDA=1 adds the CUDA kernels; the version's local tag names the build)
SHELL := /bin/bash
MMATTN_VENV ?= $(HOME)/.cache/mmattn/venv
export MMATTN_VENV
PY := $(MMATTN_VENV)/bin/python
PYTEST_ARGS ?=
# pytest-xdist workers of `make test` (one per core, at most 4); each module runs whole in one
# worker (--dist loadfile), so module fixtures are built once. TEST_WORKERS=0: one process.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))

.PHONY: env test demo bench cuda-check wheel mutation clean

env:
	@bash tools/env.sh

test: env
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: env
	$(PY) tools/demo.py

bench: env
	$(PY) tools/analysis_tools/benchmark_ops.py

cuda-check:
	@bash tools/cuda_check.sh

mutation: env
	$(PY) tools/mutation.py $(MUTATION_ARGS)

wheel: env
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip wheel -q --no-build-isolation --no-deps -w dist .
	@ls -1t dist/mmattn-*.whl | head -1

clean:
	rm -rf build dist work_dirs mmattn/_C*.so mmattn/ops/_build.json
