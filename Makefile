# Plain verbs. Everything runs from the project's own virtual environment (.venv), made on first use.
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= work
REGISTRY ?=
TAG ?= latest

PROJECT ?=
REGION ?= us-central1
BUCKET ?= $(PROJECT)-catsdogs
MACHINE ?= T4_1X

.PHONY: install test run compile submit cloud clean

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
	$(BIN)/catsdogs compile --output pipeline.yaml --images-registry "$(REGISTRY)" --images-tag $(TAG) --machine $(MACHINE)

# Submits with images already pushed to REGISTRY:TAG (see `cloud` for the whole path through Cloud Build).
submit: install
	$(BIN)/catsdogs submit --project $(PROJECT) --region $(REGION) --pipeline-root gs://$(BUCKET)/pipeline-root \
		--images gs://$(BUCKET)/images --images-registry "$(REGISTRY)" --images-tag $(TAG) --machine $(MACHINE)

# Test, build, push, compile and submit on Google Cloud from this checkout.
cloud:
	gcloud builds submit --project $(PROJECT) --config cloudbuild.yaml \
		--substitutions=_REGION=$(REGION),_MACHINE=$(MACHINE),_TAG=$$(git rev-parse HEAD)

clean:
	rm -rf $(VENV) $(WORKDIR) pipeline.yaml .pytest_cache
