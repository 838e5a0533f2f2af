# segserve: `make demo` and `make test` work on a fresh clone; everything else builds on `install`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install test demo proto proto-check bench lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m segserve.demo.run_demo

proto: install
	$(PY) tools/gen_proto.py

bench: install
	$(PY) -m segserve bench

lint: install
	$(VENV)/bin/ruff check service tests benchmarks tools
	$(VENV)/bin/ruff format --check service tests benchmarks tools

format: install
	$(VENV)/bin/ruff format service tests benchmarks tools
	$(VENV)/bin/ruff check --fix service tests benchmarks tools

clean:
	rm -rf $(VENV) demo-output .pytest_cache
