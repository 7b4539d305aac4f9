# Every target installs what it needs: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
T2S    := $(BIN)/t2s
STAMP  := $(VENV)/.installed

.PHONY: setup model test demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# llama-cpp-python compiles llama.cpp (about 9 minutes on 2 cores the first time);
	# pip's wheel cache makes every later install take seconds.
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

model: setup
	$(BIN)/python -m t2s.embedded

test: setup model
	$(BIN)/python -m pytest -q

demo: setup model
	$(BIN)/python -m t2s.demo

bench: setup model
	$(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/ruff check t2s tests bench

clean:
	rm -rf $(VENV) build *.egg-info
