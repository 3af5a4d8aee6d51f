# Every target works on a fresh machine: the venv is made on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test check lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The official SDK, for the conformance test (about 400 MB; CI installs it).
install-arize: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,arize]'

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/pytest -q

check: $(STAMP)
	$(BIN)/ruff format --check ingest tests scripts bench
	$(BIN)/ruff check ingest tests scripts bench
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff format ingest tests scripts bench
	$(BIN)/ruff check --fix ingest tests scripts bench

bench: install-arize
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache *.egg-info
