# Shoal — one command to set up and run the demo (`make demo`), one for all tests (`make test`).
# Everything a fresh machine needs is installed from here: Go modules, the Python virtual
# environment in .venv (exactly the versions in requirements-dev.lock), the dashboard's npm
# packages and, for the browser test, Debian's chromium.

GO      ?= go
PYTHON  ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
LOCK    := requirements-dev.lock
PIP     := -m pip --disable-pip-version-check
BIN     := bin/shoal
GOFILES := $(shell find . -name '*.go' -not -path './.venv*' -not -path './node_modules/*' -not -path '*/node_modules/*')

export SHOAL_BIN    := $(CURDIR)/$(BIN)
export SHOAL_PYTHON := $(CURDIR)/$(VPY)

.PHONY: all build demo demo-go test test-go test-python test-browser test-latest lint lint-python venv lock lock-upgrade clean help

include dashboard/Makefile.inc
-include benchmarks/bench.mk

all: build

help:
	@echo "make demo        set up, then a short Python session on a local cluster (examples/demo.py)"
	@echo "make demo-go     the same kind of demo from Go: a graph of Go tasks and an Arrow pipeline"
	@echo "make test        set up everything and run every test (what CI runs)"
	@echo "make test-latest the Python tests against the newest release of every dependency (not in CI)"
	@echo "make lock        rewrite $(LOCK) after a change to pyproject.toml's dependencies"
	@echo "make lock-upgrade rewrite $(LOCK) with the newest releases"
	@echo "make bench       full benchmark suite, Shoal vs dask.distributed (not in CI)"
	@echo "make bench-smoke every benchmark workload at tiny size"

build: $(BIN)

# The dashboard's chart library is copied into dashboard/static/vendor first, so the binary
# embeds it (go:embed); `go build` alone also works, with a page that says charts are missing.
$(BIN): $(GOFILES) VERSION go.mod go.sum $(wildcard dashboard/static/*.* dashboard/static/js/*) | dashboard-build
	$(GO) build -o $(BIN) ./cmd/shoal

venv: $(VENV)/.installed

# The development and test environment is locked: $(LOCK) pins, with their hashes, every package
# that pyproject.toml's extras test and dask and its dev group need (for CPython 3.11 on Linux),
# so no upstream release can change what `make test` runs without a commit. The package's own
# dependencies stay ranges. The editable install then uses the locked setuptools, no download,
# and compiles the C extension shoal._speedups next to its source (setup.py): editing that
# source reinstalls.
$(VENV)/.installed: pyproject.toml setup.py clients/python/shoal/_speedups.c VERSION $(LOCK)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@# the extension's compiler and Python's headers, from Debian when missing (needs root)
	@command -v cc >/dev/null && \
	  $(VPY) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y gcc python3-dev)
	$(VPY) $(PIP) install -q --require-hashes -r $(LOCK)
	$(VPY) $(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

# `make lock` after editing the dependencies in pyproject.toml (keeps every pin still allowed);
# `make lock-upgrade` for the newest releases (try them first with `make test-latest`). uv
# resolves for the target Python and platform whatever Python runs it, and writes every hash;
# it is installed in a throwaway venv just for this.
UV_VERSION := 0.13.9
lock lock-upgrade:
	@set -e; tools=$$(mktemp -d); trap 'rm -rf "$$tools"' EXIT; \
	$(PYTHON) -m venv "$$tools"; "$$tools/bin/python" $(PIP) install -q uv==$(UV_VERSION); \
	set -x; "$$tools/bin/uv" pip compile pyproject.toml --extra test --extra dask --group dev \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu --generate-hashes \
		--custom-compile-command 'make lock' --quiet -o $(LOCK) $(if $(filter lock-upgrade,$@),--upgrade)

# The Python tests against the newest release of every dependency, in their own venv (not in
# CI): upstream breakage shows here before a `make lock-upgrade` brings it into .venv.
VENV_LATEST := .venv-latest
test-latest: build
	test -x $(VENV_LATEST)/bin/python || $(PYTHON) -m venv $(VENV_LATEST)
	echo '*' > $(VENV_LATEST)/.gitignore
	$(VENV_LATEST)/bin/python $(PIP) install -q -U pip
	$(VENV_LATEST)/bin/python $(PIP) install -q -U --upgrade-strategy eager -e '.[test,dask]'
	@$(VENV_LATEST)/bin/python -c 'import importlib.metadata as m; print("newest:", ", ".join(p + " " + m.version(p) for p in ("cloudpickle", "msgpack", "pyarrow", "numpy", "pandas", "dask", "pytest", "mypy")))'
	$(VENV_LATEST)/bin/python -m mypy --strict clients/python/shoal
	SHOAL_PYTHON=$(CURDIR)/$(VENV_LATEST)/bin/python $(VENV_LATEST)/bin/python -m pytest -q clients/python/tests

# A Python session on a LocalCluster: futures, a dask.dataframe groupby, an Arrow table from Go.
demo: build venv
	$(VPY) examples/demo.py

demo-go: build venv
	./$(BIN) demo --workers 2 --python $(CURDIR)/$(VPY) --log-level warn

# Go's linters: vet, gofmt and staticcheck (a tool dependency pinned in go.mod: `go tool`).
lint: build
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) tool staticcheck ./...

# Python's linter (its rules are in pyproject.toml, [tool.ruff]).
lint-python: venv
	$(VPY) -m ruff check clients/python benchmarks examples

test-go: build venv
	$(GO) test -count=1 -timeout 20m ./...

# pytest's temporary directories go to a private directory removed afterwards: none is left
# behind, and another pytest run on the machine cannot rotate them away mid-run.
test-python: build venv
	$(VPY) -m mypy --strict clients/python/shoal
	@tmp=$$(mktemp -d /tmp/shoal-pytest.XXXXXX); trap 'rm -rf "$$tmp"' EXIT; \
	echo "SHOAL_REQUIRE_SPEEDUPS=1 $(VPY) -m pytest -q --basetemp $$tmp/t clients/python/tests"; \
	SHOAL_REQUIRE_SPEEDUPS=1 $(VPY) -m pytest -q --basetemp "$$tmp/t" clients/python/tests

test-browser: build dashboard-chromium
	$(MAKE) dashboard-e2e

test: lint lint-python test-go test-python test-browser bench-smoke

clean:
	rm -rf bin build dist *.egg-info
