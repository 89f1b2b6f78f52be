# Two commands on a fresh machine with python3 >= 3.10, make and gcc:
#   make test    -- create .venv, install numba-ln with its test extras, run every test
#   make bench   -- same set-up, then the benchmark table
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The second run executes the GPU kernels under numba's CUDA simulator (the
# first skips them unless a real GPU is present; it compiles them to PTX).
test: $(STAMP)
	$(PY) -m pytest
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest tests/gpu

bench: $(STAMP)
	$(PY) -m numba_ln bench

clean:
	rm -rf $(VENV) build .pytest_cache .benchmarks
	find . -name __pycache__ -prune -exec rm -rf {} +
