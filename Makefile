# Plain verbs. Everything runs from the project's own virtual environment (.venv), made on first use.
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= work
REGISTRY ?=
TAG ?= latest

.PHONY: install test run compile clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest

run: install
	$(BIN)/catsdogs run --workdir $(WORKDIR)

compile: install
	$(BIN)/catsdogs compile --output pipeline.yaml --images-registry "$(REGISTRY)" --images-tag $(TAG)

clean:
	rm -rf $(VENV) $(WORKDIR) pipeline.yaml .pytest_cache
