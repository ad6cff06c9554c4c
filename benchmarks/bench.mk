# Benchmarks: Shoal vs dask.distributed on this machine (included from the top-level Makefile).
#
#   make bench        full suite, 3 repetitions per workload and system (10–16 minutes here, plus
#                     TPC-H SF 1: its data is made once into benchmarks/tpch/data/; not in CI)
#   make bench-smoke  every workload at tiny size, results checked (under 2 minutes; part of make test)
#
# Options: make bench BENCH_ARGS="--only map,chain --reps 5"
#          make bench BENCH_ARGS="--only tpch --tpch-sf 10 --tpch-queries 1,3,11,15"
# Results: a markdown table on stdout, raw figures in benchmarks/results/.

BENCH_ARGS ?=

.PHONY: bench bench-smoke bench-go

# dask[dataframe], distributed and duckdb (TPC-H's data and answers) come with the locked venv
# (pyproject.toml's dev group); the venv is reinstalled from the lock if one is missing.
benchmarks/.deps: $(VENV)/.installed $(LOCK)
	$(VPY) -c 'import distributed, dask.dataframe, pyarrow, numpy, duckdb, duckdb_extension_tpch' 2>/dev/null || \
		$(VPY) $(PIP) install -q --require-hashes -r $(LOCK)
	touch $@

benchmarks/bin/shoalbench: $(GOFILES) go.mod go.sum
	$(GO) build -o $@ ./benchmarks/cmd/shoalbench

bench: build venv benchmarks/.deps benchmarks/bin/shoalbench
	$(VPY) benchmarks/run.py $(BENCH_ARGS)

bench-smoke: build venv benchmarks/.deps benchmarks/bin/shoalbench
	$(VPY) benchmarks/run.py --smoke --no-save $(BENCH_ARGS)

# Go micro-benchmarks of the hot paths, plus the end-to-end ones under benchmarks/.
bench-go: build
	$(GO) test -run '^$$' -bench . -benchmem ./scheduler/... ./internal/wire/... ./arrowio/... ./worker/... ./benchmarks/...
