# Dealtrail: `make run` starts the service on SQLite, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test test-unit lint format clean demo bench bench-smoke bench-scale bench-dashboard vendor

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/dealtrail serve --host $(HOST) --port $(PORT)

# Two test processes (one a core here): the tests spend most of their time waiting on
# started services and databases. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test-unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# make demo: a generated demo database under data/demo (filled once), then the service.
# make demo DEMO_DATA=DIR imports a CRM-opportunities directory into it instead.
DEMO_DIR   := data/demo
DEMO_DEALS ?= 2000
DEMO_SEED  ?= 42
DEMO_DATA  ?=

demo: install
	DATABASE_URL=sqlite:///$(DEMO_DIR)/dealtrail.db DEALTRAIL_DATA_DIR=$(DEMO_DIR) \
	DEALTRAIL_API_KEYS= DEALTRAIL_ENV=development DEALTRAIL_DB_SCHEMA= \
	$(BIN)/dealtrail demo run --deals $(DEMO_DEALS) --seed $(DEMO_SEED) \
		--host $(HOST) --port $(PORT) $(if $(DEMO_DATA),--import-crm "$(DEMO_DATA)")

# make bench: the benchmark suite (tens of minutes; PostgreSQL from BENCH_DATABASE_URL,
# default the local server); results in bench/results/latest.json, see bench/RESULTS.md.
# make bench-smoke: the same code at tiny sizes (seconds), as CI runs it.
bench: install
	$(BIN)/python -m bench

bench-smoke: install
	$(BIN)/python -m bench --smoke

# make bench-scale: rebuild, commands and queries at 100k, 300k and 1M events, with a chart
# (matplotlib, the bench extra); results in bench/results/scale.json and scale.png.
bench-scale: install
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m bench.scale

# make bench-dashboard: the dashboard in Chromium on make-demo data (time until the board
# is interactive, bytes of the first load); results in bench/results/dashboard.json.
bench-dashboard: install
	$(BIN)/python -m bench.dashboard

# make vendor: the front-end packages pinned in web/package-lock.json (needs npm), copied
# where the dashboard (Chart.js) and its browser tests (axe-core) load them. The copies are
# committed, so running the service or the tests never needs Node.
vendor:
	cd web && npm ci --no-audit --no-fund
	cp web/node_modules/chart.js/dist/chart.umd.min.js services/pipeline_api/dashboard/static/vendor/
	cp web/node_modules/axe-core/axe.min.js tests/browser/vendor/

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
