# Two entry points (see README): `make serve` and `make test`. Both do the whole set-up first.
PY ?= python3
PIP = $(PY) -m pip

.PHONY: setup serve test lint format

setup:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,ray]"

serve: setup
	$(PY) -m xyserve.cli serve --host 127.0.0.1 --port 8000

lint:
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

format:
	$(PY) -m ruff format src tests scripts
	$(PY) -m ruff check --fix src tests scripts

# Two workers, tests handed out as each worker frees (worksteal): 1.5-1.6x the serial wall
# time on a 2-core box (docs/perf.md, "The test suite's wall time"). `-n 0` runs serially.
TEST_WORKERS ?= 2

test: setup lint
	TRITON_INTERPRET=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests
