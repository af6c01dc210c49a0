# Two commands from a fresh clone: `make run` (dashboard on the bundled demo model, offline) and `make test`
# (sets up the virtualenv and the browser the browser test drives, then lint and the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: run test lint bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime-stamp: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-stamp: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.runtime-stamp $@

run: $(VENV)/.runtime-stamp
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.headless true

test: $(VENV)/.dev-stamp
	$(BIN)/ruff check .
	scripts/setup-browser $(BIN)
	$(BIN)/python -m pytest

lint: $(VENV)/.dev-stamp
	$(BIN)/ruff check .

bench: $(VENV)/.dev-stamp
	$(BIN)/python benchmarks/engine.py

clean-venv:
	rm -rf $(VENV)
