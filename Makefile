# Two commands from a fresh clone: `make run` (dashboard on the bundled demo model, offline) and `make test`
# (sets up the virtualenv and the browser the browser test drives, then lint and the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: run test lint bench pacs clean-venv

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
	scripts/setup-pacs
	$(BIN)/python -m pytest

lint: $(VENV)/.dev-stamp
	$(BIN)/ruff check .

# A local Orthanc PACS (DICOMweb) on 127.0.0.1:$(PACS_PORT) holding the bundled sample DICOMs, until Ctrl-C; it prints
# the file to `source` for XAI_PACS_URL / XAI_PACS_USER / XAI_PACS_PASSWORD (the password is never printed).
PACS_PORT ?= 8042
pacs: $(VENV)/.runtime-stamp
	scripts/setup-pacs
	$(BIN)/python -m tests.orthanc --port $(PACS_PORT) --load assets/samples/dicom

bench: $(VENV)/.dev-stamp
	$(BIN)/python benchmarks/engine.py

clean-venv:
	rm -rf $(VENV)
