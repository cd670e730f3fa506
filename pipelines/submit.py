"""Submitting the compiled Vertex pipeline as a Vertex AI PipelineJob (or printing the request: --dry-run)."""

import contextlib
import json
import math
import re

import yaml

from components.errors import InputError

TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": None, "LIST": json.loads,
         "STRUCT": json.loads}


@contextlib.contextmanager
def credentials_hint():
    """Turns google-auth's missing-credentials error into one that says what to do."""
    import google.auth.exceptions

    try:
        yield
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise InputError(NO_CREDENTIALS) from e


NO_CREDENTIALS = ("no Google Cloud credentials: run `gcloud auth application-default login` or set "
                  "GOOGLE_APPLICATION_CREDENTIALS to a service account key file")


def check_region(region: str) -> str:
    """Refuses a region Vertex AI does not serve (the SDK's own list) before a request is built."""
    from google.cloud.aiplatform.constants import base

    if region not in base.SUPPORTED_REGIONS:
        near = sorted(r for r in base.SUPPORTED_REGIONS if r.split("-")[0] == region.split("-")[0])
        hint = f"; in that area: {', '.join(near)}" if near else "; e.g. us-central1, europe-west4"
        raise InputError(f"--region {region!r} is not a Vertex AI region{hint}")
    return region


def pipeline_parameters(template_path: str) -> dict[str, dict]:
    """The compiled pipeline's parameters: name -> {"parameterType": ..., "defaultValue"?: ...}."""
    with open(template_path) as f:
        return yaml.safe_load(f)["root"]["inputDefinitions"]["parameters"]


def _boolean(name: str, text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise InputError(f"--param {name}={text}: expected true or false")


def parse_params(pairs: list[str], declared: dict[str, dict]) -> dict:
    """KEY=VALUE strings -> typed values, each checked against the pipeline's declared parameters."""
    values = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise InputError(f"--param {pair!r}: expected KEY=VALUE")
        if name not in declared:
            raise InputError(f"--param {name}: the pipeline has no such parameter; "
                             f"it has {', '.join(sorted(declared))}")
        kind = declared[name]["parameterType"]
        try:
            values[name] = _boolean(name, text) if kind == "BOOLEAN" else TYPES[kind](text)
        except ValueError as e:
            raise InputError(f"--param {name}={text}: not a valid {kind.lower()} ({e})") from None
        if kind == "NUMBER_DOUBLE" and not math.isfinite(values[name]):
            raise InputError(f"--param {name}={text}: expected a finite number")
    return values


def build_job(template_path: str, project: str, region: str, pipeline_root: str, images_root: str,
              params: list[str], enable_caching: bool = True, labels: dict[str, str] | None = None,
              credentials=None, service_account: str = ""):
    """An aiplatform.PipelineJob for the template; nothing is sent until it is submitted.

    service_account (the job's identity, passed again to `submit`) also becomes the pipeline's
    `service_account` parameter: the job's identity alone does not reach the steps, so without it Dataflow workers
    would run as the Compute Engine default account and training as Vertex's Custom Code service agent."""
    from google.cloud import aiplatform

    declared = pipeline_parameters(template_path)
    paths = [("--pipeline-root", pipeline_root)] + [("--images", images_root)] * ("images_root" in declared)
    for name, value in paths:  # the monitor pipeline reads no images
        if not value.startswith("gs://"):
            raise InputError(f"{name} must be a gs:// path, got {value!r}")
    if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", project):
        raise InputError(f"--project {project!r} is not a Google Cloud project ID")
    values = {"project": project, "location": region, "images_root": images_root,
              "dataflow_temp_location": pipeline_root.rstrip("/") + "/dataflow-tmp"}
    values = {name: value for name, value in values.items() if name in declared}  # the monitor's has none of them
    given = parse_params(params, declared)
    if service_account and "service_account" in declared:
        if given.get("service_account", service_account) != service_account:
            raise InputError(f"--param service_account={given['service_account']} differs from --service-account "
                             f"{service_account}: give one")
        values["service_account"] = service_account
    values.update(given)
    if "canary_traffic_percent" in given and not 0 < given["canary_traffic_percent"] <= 100:
        raise InputError(f"--param canary_traffic_percent={given['canary_traffic_percent']}: must be 1..100")
    missing = sorted(name for name, spec in declared.items()
                     if name not in values and "defaultValue" not in spec and not spec.get("isOptional"))
    if missing:
        raise InputError(f"the pipeline needs --param {'=... --param '.join(missing)}=...")
    check_region(region)  # the SDK would raise its own ValueError while building the job
    with credentials_hint():
        return aiplatform.PipelineJob(
            display_name="catsdogs", template_path=template_path, pipeline_root=pipeline_root,
            # None keeps each step's compiled caching option (the registry lookups are never cached); a bool would
            # overwrite every step's with it (aiplatform/pipeline_jobs.py, _set_enable_caching_value): --no-cache.
            parameter_values=values, enable_caching=None if enable_caching else False,
            labels={"app": "catsdogs", **(labels or {})},
            project=project, location=region, credentials=credentials,
        )


def job_request(job) -> dict:
    """What a dry run prints: the job request without the (long) pipeline spec, plus the template's name."""
    request = job.to_dict()
    spec = request.pop("pipelineSpec")
    return {"templateName": spec["pipelineInfo"]["name"], **request}


def submit(job, service_account: str = "", wait: bool = False) -> str:
    """Submits the job and returns its resource name; a clear InputError when there are no credentials."""
    with credentials_hint():
        job.submit(service_account=service_account or None)
    if wait:
        job.wait()
    return job.resource_name
