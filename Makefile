# Keygate: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Set up and run Keygate on its embedded defaults (SQLite, local files, console mail).
run: $(STAMP)
	$(BIN)/keygate init
	$(BIN)/keygate run --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check connector plugin tests $(wildcard bench)
	$(BIN)/ruff format --check connector plugin tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

## Set up and run the whole test suite, on SQLite and PostgreSQL (127.0.0.1:5432).
test: $(STAMP)
	@command -v qpdf >/dev/null || apt-get install -y qpdf || (apt-get update && apt-get install -y qpdf)
	$(BIN)/ruff check connector plugin tests $(wildcard bench)
	$(BIN)/ruff format --check connector plugin tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadgroup -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
