# segserve: `make demo` and `make test` work on a fresh clone; everything else builds on `install`.
#   make demo  installs what serving and the demo need (no torch); make test / install: the dev set.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
PYTHON ?= python3
# One stamp per installed set, so `make test` after `make demo` still installs the dev set.
DEV_STAMP  := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo
BENCH_IMAGES ?= /work/shared/data/camvid/val/images

.PHONY: install test demo dist proto proto-check bench gpu-check scale-test lint format clean

install: $(DEV_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[dev]'
	touch $@ $(DEMO_STAMP)

# The dev set holds the demo set: a dev install satisfies `make demo` too.
$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[serve,demo]'
	touch $@

test: $(DEV_STAMP)
	$(PY) -m pytest -q

demo: $(DEMO_STAMP)
	$(PY) -m segserve.demo.run_demo

# sdist + wheel in dist/ (the wheel holds the shipped model): needs only `build`, not the package's set.
dist: | $(VENV)/bin/python
	$(PIP) install -q 'build>=1.2'
	rm -rf dist
	$(PY) -m build --outdir dist .

proto: install
	$(PY) tools/gen_proto.py

bench: install
	$(PY) -m segserve bench --images $(BENCH_IMAGES) --video demo/solidWhiteRight.mp4 \
	    --naive benchmarks/naive_pipeline.py --out benchmarks/results

# The GPU check (benchmarks/gpu/README.md): on the GPU machine after staging; ARGS=--dry-run anywhere.
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/gpu/check.py $(ARGS)

# 3 replicas + nginx on loopback, bounded load, failover and rolling restart (docs/scaling.md)
scale-test: install
	$(PY) benchmarks/scale_test.py

lint: install
	$(VENV)/bin/ruff check service tests benchmarks tools
	$(VENV)/bin/ruff format --check service tests benchmarks tools

format: install
	$(VENV)/bin/ruff format service tests benchmarks tools
	$(VENV)/bin/ruff check --fix service tests benchmarks tools

clean:
	rm -rf $(VENV) demo-output .pytest_cache dist build
