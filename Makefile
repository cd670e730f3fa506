# Plain verbs. Everything runs from the project's own virtual environment (.venv), made on first use.
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= work
RUN_ARGS ?=  # more flags for `catsdogs run`, e.g. RUN_ARGS='--epochs 10 --image-size 150'
REGISTRY ?=
TAG ?= latest

PROJECT ?=
REGION ?= us-central1
BUCKET ?= $(PROJECT)-catsdogs
MACHINE ?= T4_1X
SERVICE_ACCOUNT ?= catsdogs-pipelines@$(PROJECT).iam.gserviceaccount.com

.PHONY: install lint test run compile submit cloud clean engine browser images lock

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

# The `images` tests build and run the container images: they need podman or docker (installed here on CI).
# PYTEST_ARGS='-m "not images"' leaves them out where containers cannot run, e.g. inside a Cloud Build step.
# The `browser` tests open the evaluation report in headless Chromium (installed here on CI; skipped without it).
test: install lint engine browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff's configuration is in pyproject.toml ([tool.ruff]); `$(BIN)/ruff check --fix .` mends the mechanical ones.
lint: install
	$(BIN)/ruff check .

run: install
	$(BIN)/catsdogs run --workdir $(WORKDIR) $(RUN_ARGS)

compile: install
	$(BIN)/catsdogs compile --output pipeline.yaml --images-registry "$(REGISTRY)" --images-tag $(TAG) --machine $(MACHINE)

# Submits with images already pushed to REGISTRY:TAG (see `cloud` for the whole path through Cloud Build).
submit: install
	$(BIN)/catsdogs submit --project $(PROJECT) --region $(REGION) --pipeline-root gs://$(BUCKET)/pipeline-root \
		--images gs://$(BUCKET)/images --images-registry "$(REGISTRY)" --images-tag $(TAG) --machine $(MACHINE)

# Test, build, push, compile and submit on Google Cloud from this checkout.
# The source goes to our bucket, which the build's service account may read (README: one service account).
cloud:
	gcloud builds submit --project $(PROJECT) --config cloudbuild.yaml \
		--gcs-source-staging-dir gs://$(BUCKET)/cloudbuild-source \
		--substitutions=_REGION=$(REGION),_MACHINE=$(MACHINE),_TAG=$$(git rev-parse HEAD),_SERVICE_ACCOUNT=$(SERVICE_ACCOUNT),_PIPELINE_ROOT=gs://$(BUCKET)/pipeline-root,_IMAGES_ROOT=gs://$(BUCKET)/images

# Builds catsdogs-components, catsdogs-trainer and catsdogs-serving:$(TAG) locally (images/build.sh).
images: engine
	TAG=$(TAG) images/build.sh

engine:
	images/install-engine.sh

browser:
	images/install-browser.sh

# Pins every dependency of the local install and of the images (requirements.lock), after changing them.
lock: install
	$(BIN)/python images/lock.py

clean:
	rm -rf $(VENV) $(WORKDIR) pipeline.yaml .pytest_cache
