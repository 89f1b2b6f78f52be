# Two commands on a fresh machine with python3 >= 3.10, make and gcc:
#   make test    -- create .venv, install numba-ln with its test extras, run every test
#   make bench   -- same set-up, then the benchmark table
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# When $(PYTHON)'s own pip can install into another environment (--python,
# pip >= 22.3) it installs everything, the venv's own pip last and without
# bytecode: venv's copy of pip takes 8 s. Otherwise the venv's pip does it.
OUTER_PIP := $(shell $(PYTHON) -c "import pip; \
  print(tuple(map(int, pip.__version__.split('.')[:2])) >= (22, 3))" 2>/dev/null)
ifeq ($(OUTER_PIP),True)
VENV_FLAGS := --without-pip
PIP        := $(PYTHON) -m pip --python $(PY)
PIP_SETUP  := true
PIP_LAST   := $(PIP) install --quiet --no-compile pip
else
VENV_FLAGS :=
PIP        := $(PY) -m pip
# pip >= 21.3 installs a pyproject project in editable mode.
PIP_SETUP  := $(PIP) install --quiet "pip>=21.3"
PIP_LAST   := true
endif

.PHONY: venv test test-kernels test-ptx test-simulator test-simulator-kernels
.PHONY: test-simulator-api test-rest test-c
.PHONY: bench bench-deps bench-pytest bench-readme bench-gpu bench-dask clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PIP_SETUP)
	$(PIP) install --quiet --no-compile -e ".[test]"  # bytecode as modules load
	$(PIP_LAST)
	touch $(STAMP)

venv: $(STAMP)

# Six groups, two at a time (-O prints each group's output when it is done):
# a cold run is compilation, one core per process. The GPU kernels under
# numba's CUDA simulator, the longest group, start first; the kernels' tests
# fill numba's cache beside them, then the PTX checks and the simulator's API
# tests run; the C tests and the remaining Python tests start
# once the kernels' tests are done and load the CPU kernels from the cache
# instead of compiling them a second time (numba_ln._cache names each cached
# signature's file after it, so processes filling the cache at once are
# safe, only slower). Outside the
# simulator group, GPU tests skip unless a real GPU is present.
KERNEL_TESTS := tests/test_backward.py tests/test_forward.py
PTX_TESTS    := tests/test_ptx.py
GPU_TESTS    := tests/gpu
# The simulator's two halves (a Python thread per CUDA thread: the longest groups).
SIM_KERNEL_TESTS := tests/gpu/test_gpu_kernels.py tests/gpu/test_memory_traffic.py
C_TESTS      := tests/test_capi.py

test: $(STAMP)
	@$(MAKE) --no-print-directory -j2 -O test-simulator-kernels test-kernels test-ptx \
	  test-simulator-api test-c test-rest

test-kernels: $(STAMP)
	$(PY) -m pytest $(KERNEL_TESTS)

test-ptx: $(STAMP)
	$(PY) -m pytest $(PTX_TESTS)

test-simulator: test-simulator-kernels test-simulator-api

test-simulator-kernels: $(STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest $(SIM_KERNEL_TESTS)

test-simulator-api: $(STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest $(GPU_TESTS) $(addprefix --ignore=,$(SIM_KERNEL_TESTS))

test-c: $(STAMP) | test-kernels
	$(PY) -m pytest $(C_TESTS)

test-rest: $(STAMP) | test-kernels
	$(PY) -m pytest $(addprefix --ignore=,$(KERNEL_TESTS) $(PTX_TESTS) $(GPU_TESTS) $(C_TESTS))

# PyTorch is an optional competitor in the benchmarks: never a dependency, never
# installed by `make test`. bench-deps tries once to install it and carries on
# without it (BENCH_TORCH=0 skips; rm .venv/.torch-stamp to try again). The C
# library is built too, so the table has a C ABI row.
BENCH_TORCH ?= 1
TORCH_SPEC  ?= torch==2.13.0
TORCH_STAMP := $(VENV)/.torch-stamp

$(TORCH_STAMP): $(STAMP)
	@if [ "$(BENCH_TORCH)" = 1 ]; then \
	  $(PIP) install --quiet --retries 0 "$(TORCH_SPEC)" \
	  || echo "note: PyTorch could not be installed; the benchmarks run without its rows"; \
	fi
	@touch $(TORCH_STAMP)

bench-deps: $(TORCH_STAMP)
	$(PY) capi/build.py --outdir build >/dev/null || echo "note: no C library; the C ABI row is skipped"

# The benchmark tables, then the size curve (about 3 minutes on 2 cores);
# JSON and PNGs in bench-results/ (gitignored).
bench: $(STAMP) bench-deps
	$(PY) -m bench --out bench-results

# The same cases timed by pytest-benchmark (about 5 minutes on 2 cores).
bench-pytest: $(STAMP) bench-deps
	mkdir -p bench-results
	$(PY) -m pytest bench --benchmark-enable --benchmark-json=bench-results/pytest-benchmark.json

# On a machine with a GPU: numba-ln's CUDA kernels against a copy and PyTorch (under 2 minutes).
bench-gpu: $(STAMP)
	$(PY) -m bench.gpu

# numba_ln.dask on LocalClusters of 1 and 2 worker processes against dask.array
# expressions and numba-ln in one process (512 MiB of float32; a few minutes on 2 cores).
bench-dask: $(STAMP)
	$(PY) -m bench.cluster

# Regenerate docs/perf/ and docs/benchmarks.md on the development machine.
bench-readme: $(STAMP) bench-deps
	$(PY) -m bench --out docs/perf --update-docs docs/benchmarks.md

clean:
	rm -rf $(VENV) build .pytest_cache .benchmarks
	find . -name __pycache__ -prune -exec rm -rf {} +
