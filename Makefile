# Fresh machine: `make run` (set up, then serve on the embedded defaults) and `make test` (set up, then test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run example test lint postgres bench peers clean

$(BIN)/appraise: pyproject.toml setup.py app/valuation/shapley/_small_spd.c
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first (from local disk where available), so the range in pyproject is met by it.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,ray]'
	touch $(BIN)/appraise

setup: $(BIN)/appraise

run: setup
	$(BIN)/appraise serve --migrate

example: setup
	$(BIN)/python examples/make_breast_cancer.py examples/data
	$(BIN)/appraise value relevance-diversity --buyer examples/data/buyer.csv \
		--seller examples/data/seller_like.csv --seller examples/data/seller_malignant.csv \
		--seller examples/data/seller_noise.csv --relative-threshold --threshold 0.05

lint: setup
	$(BIN)/ruff check app tests bench examples migrations

# The service tests run on SQLite and on the local Postgres (127.0.0.1:5432): start it if it is down.
postgres:
	@if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
		pg_ctlcluster --skip-systemctl-redirect "$$(ls /etc/postgresql | head -n 1)" main start || true; fi

test: setup lint postgres
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/relevance_diversity.py

# pyDVL and friends for the side-by-side benchmarks, in their own venv (pyDVL pins numpy<2).
peers: .venv-peers/bin/python
.venv-peers/bin/python: bench/peers/requirements.txt
	$(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install --quiet -r bench/peers/requirements.txt
	touch .venv-peers/bin/python

clean:
	rm -rf $(VENV) .venv-peers build *.egg-info examples/data
