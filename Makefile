# The two commands of the README: `make demo` and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test test-slow lint bench latency-check bench-check bench-compare bench-compare-quick

setup:
	bash tools/setup.sh

demo: setup
	.venv/bin/hwcompress demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=10

test-slow: setup
	$(PY) -m pytest -q -m slow -p no:cacheprovider

lint: setup
	.venv/bin/ruff check hwcompress profilers tools tests
	.venv/bin/mypy hwcompress

bench: setup
	$(PY) tools/bench_profiler.py

latency-check: setup
	bash tools/ci_check.sh

bench-check: setup
	$(PY) tools/bench_check.py

# issue 8: measured search vs proxies and peers' methods (hours for the full grid; rows resume)
bench-compare: setup
	$(PY) tools/bench_compare.py --publish tools/results

bench-compare-quick: setup
	$(PY) tools/bench_compare.py --quick
