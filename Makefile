# streamscore: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NATIVE_SRC := $(wildcard ext/src/*) CMakeLists.txt pyproject.toml

.PHONY: demo test test-fast soak bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs the project editable with its native kernels (ext/) built in place.
$(STAMP): $(BIN)/python $(NATIVE_SRC)
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/streamscore demo $(DEMO_ARGS)

# Leg 1: the whole suite with the native kernels required.
# Leg 2: the kernel-dependent tests again on the pure-Python twin.
test: $(STAMP)
	STREAMSCORE_REQUIRE_NATIVE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)
	STREAMSCORE_DISABLE_NATIVE=1 $(BIN)/python -m pytest -q tests/unit/test_ext_parity.py tests/unit/test_ext_tumbling.py tests/unit/test_features.py tests/unit/test_processor.py tests/unit/test_ext_keyed.py tests/unit/test_features_hopping.py tests/unit/test_features_session.py tests/unit/test_features_session_grace.py tests/unit/test_features_restart.py tests/unit/test_linear.py $(PYTEST_ARGS)

# The soak variants of the fault suite (marker `slow`, ~4 min): .ci/run runs them after `make test`.
soak: $(STAMP)
	STREAMSCORE_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build .cache reports
