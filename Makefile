# Shoal — one command to set up and run the demo (`make demo`), one for all tests (`make test`).
# Everything a fresh machine needs is installed from here: Go modules, the Python virtual
# environment in .venv, the dashboard's npm packages and, for the browser test, Debian's chromium.

GO      ?= go
PYTHON  ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
BIN     := bin/shoal
GOFILES := $(shell find . -name '*.go' -not -path './.venv/*' -not -path './node_modules/*' -not -path '*/node_modules/*')

export SHOAL_BIN    := $(CURDIR)/$(BIN)
export SHOAL_PYTHON := $(CURDIR)/$(VPY)

.PHONY: all build demo test test-go test-python test-browser lint venv clean help

include dashboard/Makefile.inc
-include benchmarks/bench.mk

all: build

help:
	@echo "make demo        build, start a local cluster, run a demo graph, print its results"
	@echo "make test        set up everything and run every test (what CI runs)"
	@echo "make bench       full benchmark suite, Shoal vs dask.distributed (not in CI)"
	@echo "make bench-smoke every benchmark workload at tiny size"

build: $(BIN)

# The dashboard's chart library is copied into dashboard/static/vendor first, so the binary
# embeds it (go:embed); `go build` alone also works, with a page that says charts are missing.
$(BIN): $(GOFILES) go.mod go.sum $(wildcard dashboard/static/*.* dashboard/static/js/*) | dashboard-build
	$(GO) build -o $(BIN) ./cmd/shoal

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test,dask]'
	touch $@

demo: build venv
	./$(BIN) demo --workers 2 --python $(CURDIR)/$(VPY)

lint: build
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)

test-go: build venv
	$(GO) test -count=1 -timeout 20m ./...

test-python: build venv
	$(VPY) -m mypy --strict clients/python/shoal
	$(VPY) -m pytest -q clients/python/tests

test-browser: build dashboard-chromium
	$(MAKE) dashboard-e2e

test: lint test-go test-python test-browser bench-smoke

clean:
	rm -rf bin build dist *.egg-info
