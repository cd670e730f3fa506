"""Deployment to a Vertex AI endpoint through the aiplatform SDK's API clients (`catsdogs deploy`).

The SavedModel folder (in GCS) is uploaded as a Model served by our container: as a new version of the newest
model with the same display name when there is one (`parent_model`), made its default version, with any
extra version aliases. The newest endpoint with the endpoint display name is reused (created only when there
is none), and the new version is deployed to it with autoscaling between min and max replicas and a share of
the traffic (the endpoint's other models share the rest as before). Earlier deployments of the model that
then take no traffic are undeployed, but for the newest `keep_previous` (they would bill their nodes forever).

Every call is built as the request object the SDK sends, so `--dry-run` prints exactly those requests
without credentials; values only known once earlier calls have answered are shown as {placeholders}.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from google.cloud import aiplatform_v1
from google.protobuf import json_format

from components.contracts import LOG_REQUESTS_ENV, LOG_SAMPLE_RATE_ENV
from components.deploy.config import DEPLOY
from components.deploy.registry import CANARY_ALIAS, DEFAULT_ALIAS
from components.errors import InputError

log = logging.getLogger(__name__)

# What Vertex needs to know about our serving container (images/serving; components/serve/server.py).
SERVING_PORT = 8080
HEALTH_ROUTE = "/health"
PREDICT_ROUTE = "/predict"

# Vertex's rule for version aliases.
ALIAS = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]")
NEW_MODEL_KEY = "0"  # a traffic_split key meaning "the model being deployed"

FOUND_MODEL = "{the model that ListModels finds, if any}"
UPLOADED_MODEL = "{the model version that UploadModel creates}"
FOUND_ENDPOINT = "{the endpoint that ListEndpoints finds, or that CreateEndpoint creates}"
OTHER_MODELS = "{the endpoint's other deployed models, scaled to share the rest}"
IDLE_MODEL = "{each earlier deployment of the model that takes no traffic, beyond the newest keep_previous}"


@dataclass(frozen=True)
class VertexDeployment:
    project: str
    location: str
    model_dir: str  # gs:// folder holding saved_model.pb
    serving_image: str
    model_display_name: str = DEPLOY.model_display_name  # defaults: components/deploy/config.py
    endpoint_display_name: str = DEPLOY.endpoint_display_name
    machine_type: str = DEPLOY.machine_type
    min_replicas: int = DEPLOY.min_replicas
    max_replicas: int = DEPLOY.max_replicas
    traffic_percent: int = DEPLOY.traffic_percent
    version_aliases: tuple[str, ...] = ()
    keep_previous: int = DEPLOY.keep_previous  # earlier idle deployments of the model left deployed (undeploy_previous)
    log_requests: str = DEPLOY.log_requests  # gs:// folder the serving container logs sampled requests to
    log_sample_rate: float = DEPLOY.log_sample_rate

    def __post_init__(self):
        if not self.project or not self.location:
            raise InputError("a Vertex deployment needs a project and a location (e.g. us-central1)")
        if not self.model_dir.startswith("gs://"):
            raise InputError(f"Vertex reads models from GCS: MODEL_DIR must be gs://..., got {self.model_dir!r}")
        if "/" not in self.serving_image:
            raise InputError(f"Vertex pulls the serving image from a registry, got {self.serving_image!r}: "
                             "pass --images-registry REGION-docker.pkg.dev/PROJECT/REPO")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise InputError(f"replicas: need 1 <= min ({self.min_replicas}) <= max ({self.max_replicas})")
        check_traffic_percent(self.traffic_percent)
        if self.log_requests and not self.log_requests.startswith("gs://"):
            raise InputError(f"the serving container logs requests to GCS: --log-requests must be gs://..., "
                             f"got {self.log_requests!r}")
        if self.log_requests and not 0 < self.log_sample_rate <= 1:
            raise InputError(f"--log-sample-rate must be in (0, 1], got {self.log_sample_rate}")
        if self.keep_previous < 0:
            raise InputError(f"keep previous must be 0 or more deployments, got {self.keep_previous}")
        bad = [a for a in self.version_aliases if not ALIAS.fullmatch(a) or a in (DEFAULT_ALIAS, CANARY_ALIAS)]
        if bad:
            raise InputError(f"version aliases {bad}: each must match {ALIAS.pattern} and not be "
                             f"'{DEFAULT_ALIAS}' or '{CANARY_ALIAS}' (the traffic percent sets those)")

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"



def api_endpoint(location: str) -> str:
    return f"{location}-aiplatform.googleapis.com"


def _client(client_class, location: str):
    return client_class(client_options={"api_endpoint": api_endpoint(location)})


def _named(display_name: str) -> str:
    return f'display_name="{display_name}"'


def list_models_request(project: str, location: str, display_name: str) -> aiplatform_v1.ListModelsRequest:
    return aiplatform_v1.ListModelsRequest(parent=f"projects/{project}/locations/{location}",
                                           filter=_named(display_name), order_by="create_time desc", page_size=1)


def serving_env(log_requests: str, log_sample_rate: float) -> list[aiplatform_v1.EnvVar]:
    """The serving container's settings (components/serve/server.py reads them): request logging."""
    if not log_requests:
        return []
    return [aiplatform_v1.EnvVar(name=LOG_REQUESTS_ENV, value=log_requests),
            aiplatform_v1.EnvVar(name=LOG_SAMPLE_RATE_ENV, value=str(log_sample_rate))]


def upload_request(d: VertexDeployment, parent_model: str) -> aiplatform_v1.UploadModelRequest:
    container = aiplatform_v1.ModelContainerSpec(
        image_uri=d.serving_image, health_route=HEALTH_ROUTE, predict_route=PREDICT_ROUTE,
        ports=[aiplatform_v1.Port(container_port=SERVING_PORT)],
        env=serving_env(d.log_requests, d.log_sample_rate),
    )
    model = aiplatform_v1.Model(
        display_name=d.model_display_name, artifact_uri=d.model_dir, container_spec=container,
        # A new version of a model is its `canary` while it takes part of the traffic, else its `default` (the
        # champion); a new model's first version is its default anyway.
        version_aliases=[*d.version_aliases, *([new_version_alias(d.traffic_percent)] if parent_model else [])],
    )
    return aiplatform_v1.UploadModelRequest(parent=d.parent, parent_model=parent_model, model=model)


def check_traffic_percent(percent: int) -> None:
    if not 0 < percent <= 100:
        raise InputError(f"canary traffic percent must be 1..100, got {percent}")


def new_version_alias(traffic_percent: int) -> str:
    """A new version's alias: `canary` when it takes part of the traffic (the champion keeps `default` until
    `promote`), `default` when it takes all of it."""
    check_traffic_percent(traffic_percent)
    return CANARY_ALIAS if traffic_percent < 100 else DEFAULT_ALIAS


def list_endpoints_request(project: str, location: str, display_name: str) -> aiplatform_v1.ListEndpointsRequest:
    return aiplatform_v1.ListEndpointsRequest(parent=f"projects/{project}/locations/{location}",
                                              filter=_named(display_name), order_by="create_time desc", page_size=1)


def create_endpoint_request(project: str, location: str, display_name: str) -> aiplatform_v1.CreateEndpointRequest:
    return aiplatform_v1.CreateEndpointRequest(parent=f"projects/{project}/locations/{location}",
                                               endpoint=aiplatform_v1.Endpoint(display_name=display_name))


def deploy_request(d: VertexDeployment, model: str, endpoint: str,
                   traffic_split: dict[str, int]) -> aiplatform_v1.DeployModelRequest:
    resources = aiplatform_v1.DedicatedResources(
        machine_spec=aiplatform_v1.MachineSpec(machine_type=d.machine_type),
        min_replica_count=d.min_replicas, max_replica_count=d.max_replicas,
    )
    deployed = aiplatform_v1.DeployedModel(model=model, display_name=d.model_display_name,
                                           dedicated_resources=resources)
    return aiplatform_v1.DeployModelRequest(endpoint=endpoint, deployed_model=deployed, traffic_split=traffic_split)


def allocate_traffic(current: dict[str, int], percent: int) -> dict[str, int]:
    """The endpoint's traffic split once the new model takes `percent`: the others keep their proportions."""
    serving = {k: v for k, v in current.items() if v > 0}
    if not serving:
        if percent != 100:
            raise InputError(f"the endpoint serves no model yet, so the new one must take 100% of the traffic, "
                             f"not {percent}%")
        return {NEW_MODEL_KEY: 100}
    rest, total = 100 - percent, sum(serving.values())
    split = {k: v * rest // total for k, v in sorted(serving.items())}
    for key in list(split)[: rest - sum(split.values())]:  # hand out what rounding down left over
        split[key] += 1
    return {**split, NEW_MODEL_KEY: percent}


def as_json(request) -> dict:
    """A request as the JSON the REST API takes."""
    return json_format.MessageToDict(type(request).pb(request))


def dry_run(d: VertexDeployment) -> dict:
    """Every request `deploy` would send, in order."""
    split = {NEW_MODEL_KEY: 100} if d.traffic_percent == 100 else {OTHER_MODELS: 100 - d.traffic_percent,
                                                                   NEW_MODEL_KEY: d.traffic_percent}
    calls = [
        ("ModelService.ListModels", list_models_request(d.project, d.location, d.model_display_name)),
        ("ModelService.GetModel (a canary still in place is rolled back first: see rollback)",
         aiplatform_v1.GetModelRequest(name=f"{FOUND_MODEL}@{CANARY_ALIAS}")),
        ("ModelService.UploadModel", upload_request(d, FOUND_MODEL)),
        ("EndpointService.ListEndpoints",
         list_endpoints_request(d.project, d.location, d.endpoint_display_name)),
        ("EndpointService.CreateEndpoint (only if none is found)",
         create_endpoint_request(d.project, d.location, d.endpoint_display_name)),
        ("EndpointService.DeployModel", deploy_request(d, UPLOADED_MODEL, FOUND_ENDPOINT, split)),
        ("EndpointService.GetEndpoint", aiplatform_v1.GetEndpointRequest(name=FOUND_ENDPOINT)),
        ("EndpointService.UndeployModel (for each)", undeploy_request(FOUND_ENDPOINT, IDLE_MODEL)),
    ]
    return {"api_endpoint": api_endpoint(d.location),
            "calls": [{"method": method, "request": as_json(request)} for method, request in calls]}


def find_or_create_endpoint(project: str, location: str, display_name: str) -> aiplatform_v1.Endpoint:
    """The newest endpoint with this display name, created when there is none (one endpoint, many deploys)."""
    client = _client(aiplatform_v1.EndpointServiceClient, location)
    found = next(iter(client.list_endpoints(request=list_endpoints_request(project, location, display_name))), None)
    if found is not None:
        log.info("reusing endpoint %s (%s)", found.name, display_name)
        return found
    endpoint = client.create_endpoint(request=create_endpoint_request(project, location, display_name)).result()
    log.info("created endpoint %s (%s)", endpoint.name, display_name)
    return endpoint


def find_model(project: str, location: str, display_name: str) -> str:
    """The resource name of the newest model with this display name, or "" when there is none."""
    client = _client(aiplatform_v1.ModelServiceClient, location)
    found = next(iter(client.list_models(request=list_models_request(project, location, display_name))), None)
    return found.name if found is not None else ""


def deploy(d: VertexDeployment) -> tuple[str, str]:
    """Uploads and deploys; returns (model version, endpoint) resource names. Needs Google credentials. An earlier
    canary still in place is rolled back first: one canary at a time."""
    parent = find_model(d.project, d.location, d.model_display_name)
    if parent:
        retire_canary(d.project, d.location, d.model_display_name, d.endpoint_display_name)
    uploaded = _client(aiplatform_v1.ModelServiceClient, d.location).upload_model(
        request=upload_request(d, parent)).result()
    model = f"{uploaded.model}@{uploaded.model_version_id}"
    log.info("uploaded %s%s", model, f" as a new version of {parent}" if parent else "")
    endpoint = find_or_create_endpoint(d.project, d.location, d.endpoint_display_name)
    split = allocate_traffic(dict(endpoint.traffic_split), d.traffic_percent)
    _client(aiplatform_v1.EndpointServiceClient, d.location).deploy_model(
        request=deploy_request(d, model, endpoint.name, split)).result()
    log.info("deployed %s to %s with traffic %s", model, endpoint.name, split)
    undeploy_previous(d.project, d.location, endpoint.name, d.model_display_name, d.keep_previous)
    return model, endpoint.name


def models_to_undeploy(endpoint: aiplatform_v1.Endpoint, display_name: str,
                       keep: int) -> list[aiplatform_v1.DeployedModel]:
    """The endpoint's deployed models of this display name that take no traffic, less the `keep` newest of them.

    Every deploy leaves the previous model deployed at 0% traffic on its own dedicated nodes, billed as if it
    served; these are the ones to undeploy. A model that takes traffic is never one of them, nor is another
    model's deployment sharing the endpoint. Undeploying keeps the version in the Model Registry."""
    if keep < 0:
        raise InputError(f"keep must be 0 or more previous models, got {keep}")
    split = dict(endpoint.traffic_split)
    idle = [m for m in endpoint.deployed_models if m.display_name == display_name and split.get(m.id, 0) == 0]
    idle.sort(key=lambda m: (m.create_time.timestamp() if m.create_time else 0, m.id), reverse=True)
    return idle[keep:]


def undeploy_request(endpoint: str, deployed_model_id: str) -> aiplatform_v1.UndeployModelRequest:
    # No traffic_split: the model takes none, and leaving it out leaves the endpoint's split as it is.
    return aiplatform_v1.UndeployModelRequest(endpoint=endpoint, deployed_model_id=deployed_model_id)


def undeploy_previous(project: str, location: str, endpoint: str, display_name: str, keep: int,
                      client: aiplatform_v1.EndpointServiceClient | None = None) -> list[str]:
    """Undeploys models_to_undeploy from the endpoint (a resource name), oldest first, so that a run cut short
    leaves the newer ones for rollback; returns their deployed model ids. Run it once the new model takes all
    the traffic. Needs Google credentials (or a `client`)."""
    if not endpoint.startswith(f"projects/{project}/locations/{location}/endpoints/"):
        raise InputError(f"endpoint {endpoint!r} is not in projects/{project}/locations/{location}")
    client = client or _client(aiplatform_v1.EndpointServiceClient, location)
    current = client.get_endpoint(name=endpoint)
    undeployed = []
    for model in reversed(models_to_undeploy(current, display_name, keep)):
        client.undeploy_model(request=undeploy_request(endpoint, model.id)).result()
        log.info("undeployed %s (%s, deployed %s) from %s", model.id, model.model, model.create_time, endpoint)
        undeployed.append(model.id)
    return undeployed


# The canary lifecycle. A version deployed with part of the traffic has the `canary` alias; the champion keeps
# `default` (what evaluation and batch prediction read) and the rest of the traffic. `promote` moves `default` and
# all the traffic to the canary and undeploys the rest; `rollback` undeploys the canary and drops its alias. Vertex
# keeps exactly one `default` per model (Model.version_aliases), so adding it to the canary takes it from the
# champion; a "-" prefix in MergeVersionAliases removes an alias (aiplatform_v1 MergeVersionAliasesRequest).


def version_with_alias(project: str, location: str, display_name: str, alias: str,
                       client: aiplatform_v1.ModelServiceClient | None = None) -> aiplatform_v1.Model | None:
    """The version of the newest model of this display name that has `alias`, or None (no model, no such alias)."""
    from google.api_core.exceptions import NotFound

    client = client or _client(aiplatform_v1.ModelServiceClient, location)
    found = next(iter(client.list_models(request=list_models_request(project, location, display_name))), None)
    if found is None:
        return None
    try:
        return client.get_model(request=aiplatform_v1.GetModelRequest(name=f"{found.name.split('@')[0]}@{alias}"))
    except NotFound:
        return None


def _versioned(model: aiplatform_v1.Model) -> str:
    return f"{model.name.split('@')[0]}@{model.version_id}"


def deployments_of(endpoint: aiplatform_v1.Endpoint, model: aiplatform_v1.Model) -> list[aiplatform_v1.DeployedModel]:
    """The endpoint's deployments of this model version (DeployedModel.model names the model, with or without
    @version; model_version_id is the version)."""
    base = model.name.split("@")[0]
    return [m for m in endpoint.deployed_models if m.model.split("@")[0] == base
            and (m.model_version_id or m.model.partition("@")[2]) == model.version_id]


def _endpoint(project: str, location: str, display_name: str,
              client: aiplatform_v1.EndpointServiceClient) -> aiplatform_v1.Endpoint | None:
    return next(iter(client.list_endpoints(request=list_endpoints_request(project, location, display_name))), None)


def _rescaled(split: dict[str, int]) -> dict[str, int]:
    """The split's shares scaled to add up to 100 again (rounding handed out from the first)."""
    total = sum(split.values())
    scaled = {k: v * 100 // total for k, v in sorted(split.items())}
    for key in list(scaled)[: 100 - sum(scaled.values())]:
        scaled[key] += 1
    return scaled


def promote(project: str, location: str, model_display_name: str, endpoint_display_name: str, keep: int = 0,
            model_client=None, endpoint_client=None) -> str:
    """Makes the canary the champion: all the endpoint's traffic to it, then the `default` alias (taken from the
    old champion), then the model's idle deployments undeployed but the newest `keep`. Returns the version."""
    model_client = model_client or _client(aiplatform_v1.ModelServiceClient, location)
    endpoint_client = endpoint_client or _client(aiplatform_v1.EndpointServiceClient, location)
    canary = version_with_alias(project, location, model_display_name, CANARY_ALIAS, model_client)
    if canary is None:
        raise InputError(f"model {model_display_name!r} has no {CANARY_ALIAS} version to promote")
    endpoint = _endpoint(project, location, endpoint_display_name, endpoint_client)
    deployed = deployments_of(endpoint, canary) if endpoint is not None else []
    if not deployed:
        raise InputError(f"the {CANARY_ALIAS} version {_versioned(canary)} is not deployed to endpoint "
                         f"{endpoint_display_name!r}: nothing to promote")
    # Traffic first: until the canary serves everything the champion keeps serving its share.
    endpoint_client.update_endpoint(request=aiplatform_v1.UpdateEndpointRequest(
        endpoint=aiplatform_v1.Endpoint(name=endpoint.name, traffic_split={deployed[0].id: 100}),
        update_mask={"paths": ["traffic_split"]}))
    model_client.merge_version_aliases(request=aiplatform_v1.MergeVersionAliasesRequest(
        name=_versioned(canary), version_aliases=[DEFAULT_ALIAS, f"-{CANARY_ALIAS}"]))
    log.info("promoted %s: %s, all the traffic of %s", _versioned(canary), DEFAULT_ALIAS, endpoint.name)
    undeploy_previous(project, location, endpoint.name, model_display_name, keep, client=endpoint_client)
    return _versioned(canary)


def rollback(project: str, location: str, model_display_name: str, endpoint_display_name: str,
             model_client=None, endpoint_client=None) -> str:
    """Removes the canary: its deployments undeployed, their traffic handed back to the endpoint's other models in
    their proportions, and its alias dropped (the version stays in the registry). Returns the version."""
    model_client = model_client or _client(aiplatform_v1.ModelServiceClient, location)
    endpoint_client = endpoint_client or _client(aiplatform_v1.EndpointServiceClient, location)
    canary = version_with_alias(project, location, model_display_name, CANARY_ALIAS, model_client)
    if canary is None:
        raise InputError(f"model {model_display_name!r} has no {CANARY_ALIAS} version to roll back")
    endpoint = _endpoint(project, location, endpoint_display_name, endpoint_client)
    for deployed in deployments_of(endpoint, canary) if endpoint is not None else []:
        rest = {k: v for k, v in endpoint.traffic_split.items() if k != deployed.id and v > 0}
        if not rest and endpoint.traffic_split.get(deployed.id, 0):
            raise InputError(f"the {CANARY_ALIAS} version {_versioned(canary)} is the only model serving "
                             f"{endpoint.name}: promote it, or deploy another version first")
        endpoint_client.undeploy_model(request=aiplatform_v1.UndeployModelRequest(
            endpoint=endpoint.name, deployed_model_id=deployed.id, traffic_split=_rescaled(rest) if rest else {},
        )).result()
        endpoint = endpoint_client.get_endpoint(request=aiplatform_v1.GetEndpointRequest(name=endpoint.name))
        log.info("undeployed the %s %s (%s) from %s", CANARY_ALIAS, deployed.id, _versioned(canary), endpoint.name)
    model_client.merge_version_aliases(request=aiplatform_v1.MergeVersionAliasesRequest(
        name=_versioned(canary), version_aliases=[f"-{CANARY_ALIAS}"]))
    return _versioned(canary)


def new_version_plan(project: str, location: str, model_display_name: str, endpoint_display_name: str,
                     traffic_percent: int, model_client=None, endpoint_client=None) -> str:
    """Before a new version of an existing model is uploaded: rolls back a canary still in place and returns the new
    version's alias, `canary` when it will share the endpoint's traffic, else `default` (it will take all of it:
    traffic_percent 100, or an endpoint that serves nothing yet)."""
    check_traffic_percent(traffic_percent)
    endpoint_client = endpoint_client or _client(aiplatform_v1.EndpointServiceClient, location)
    retire_canary(project, location, model_display_name, endpoint_display_name, model_client, endpoint_client)
    endpoint = _endpoint(project, location, endpoint_display_name, endpoint_client)
    serving = endpoint is not None and any(v > 0 for v in endpoint.traffic_split.values())
    return CANARY_ALIAS if traffic_percent < 100 and serving else DEFAULT_ALIAS


def retire_canary(project: str, location: str, model_display_name: str, endpoint_display_name: str,
                  model_client=None, endpoint_client=None) -> str:
    """Rolls back a canary that is still in place before a new version is deployed ("" when there is none), so
    canaries never pile up on the endpoint."""
    model_client = model_client or _client(aiplatform_v1.ModelServiceClient, location)
    if version_with_alias(project, location, model_display_name, CANARY_ALIAS, model_client) is None:
        return ""
    return rollback(project, location, model_display_name, endpoint_display_name, model_client, endpoint_client)
