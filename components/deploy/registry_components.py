"""KFP components for the Vertex AI Model Registry side of champion/challenger (the logic: registry.py)."""

from typing import Dict, List

from google_cloud_pipeline_components.types.artifact_types import ClassificationMetrics, VertexEndpoint, VertexModel
from kfp import dsl
from kfp.dsl import Input

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def champion_uri(project: str, location: str, model_display_name: str) -> str:
    """The champion for evaluation to compare with: the artifact URI of the model's `default` version.

    Args:
        project: Google Cloud project of the Vertex AI Model Registry.
        location: Vertex AI region, e.g. us-central1.
        model_display_name: Display name of the model whose versions the pipeline uploads.

    Returns:
        The SavedModel folder (gs://) of the default version; empty when the model does not exist yet.
    """
    from components import logs
    from components.deploy.registry import default_version_uri

    logs.setup()
    return default_version_uri(project, location, model_display_name)


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def import_evaluation(vertex_model: Input[VertexModel], evaluation: Input[ClassificationMetrics],
                      display_name: str = "catsdogs evaluation") -> str:
    """Imports the evaluate step's metrics (classification schema, confusion matrix) and its champion decision
    into the Vertex AI Model Registry as an evaluation of the uploaded model version.

    Args:
        vertex_model: The uploaded model version (ModelUploadOp's output).
        evaluation: The evaluate step's `evaluation` output (its metrics and decision).
        display_name: The evaluation's display name in the Model Registry.

    Returns:
        The imported evaluation's resource name.
    """
    import json

    from components import logs, storage
    from components.deploy.registry import import_evaluation_request, location_of, send_evaluation

    logs.setup()
    model_name = vertex_model.metadata["resourceName"]
    request = import_evaluation_request(model_name, json.loads(storage.read_text(evaluation.uri)), display_name)
    return send_evaluation(request, location_of(model_name))


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def canary_traffic_split(endpoint: Input[VertexEndpoint], canary_traffic_percent: int = 100) -> Dict[str, int]:
    """The traffic split that gives the model being deployed `canary_traffic_percent` of the endpoint's
    traffic and keeps the rest on the models it serves now, in their proportions.

    Args:
        endpoint: The endpoint the model is deployed to.
        canary_traffic_percent: Share of the traffic for the new model, 1..100 (100: no canary).

    Returns:
        A traffic split for ModelDeployOp: {"0": percent, DEPLOYED_MODEL_ID: rest, ...}.
    """
    from components import logs
    from components.deploy.registry import canary_split, location_of

    logs.setup()
    name = endpoint.metadata["resourceName"]
    return canary_split(name, location_of(name), canary_traffic_percent)


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def check_canary_percent(canary_traffic_percent: int) -> int:
    """Refuses a canary_traffic_percent outside 1..100 at the start of the run, before anything is uploaded.

    Args:
        canary_traffic_percent: The new version's share of the endpoint's traffic.

    Returns:
        The percent, checked.
    """
    from components.deploy.vertex import check_traffic_percent

    check_traffic_percent(canary_traffic_percent)
    return canary_traffic_percent


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def new_version_aliases(project: str, location: str, model_display_name: str, endpoint_display_name: str,
                        canary_traffic_percent: int) -> List[str]:
    """Rolls back a canary still in place (one canary at a time) and returns the new version's aliases: ["canary"]
    when it will share the endpoint's traffic (the champion keeps `default` until `catsdogs promote`), else
    ["default"].

    Args:
        project: Google Cloud project of the model and endpoint.
        location: Vertex AI region, e.g. us-central1.
        model_display_name: The model the new version is uploaded to.
        endpoint_display_name: The endpoint it is deployed to.
        canary_traffic_percent: The new version's share of the traffic, 1..100.

    Returns:
        The version aliases for the upload.
    """
    from components import logs
    from components.deploy.vertex import new_version_plan

    logs.setup()
    return [new_version_plan(project, location, model_display_name, endpoint_display_name, canary_traffic_percent)]


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def promote_canary(project: str, location: str, model_display_name: str, endpoint_display_name: str,
                   enabled: bool = False, keep: int = 0) -> str:
    """When enabled, promotes the model's canary as `catsdogs promote` does: all the endpoint's traffic and the
    `default` alias to it, the idle deployments but the newest `keep` undeployed. Runs before the champion is
    looked up, so the run's candidate is compared with the promoted version.

    Args:
        project: Google Cloud project of the model and endpoint.
        location: Vertex AI region, e.g. us-central1.
        model_display_name: The model whose canary is promoted.
        endpoint_display_name: The endpoint the canary serves on.
        enabled: False does nothing (the pipeline's promote_canary parameter).
        keep: Earlier deployments left deployed for an instant rollback.

    Returns:
        The promoted version ("" when not enabled).
    """
    from components import logs
    from components.deploy.vertex import promote

    logs.setup()
    return promote(project, location, model_display_name, endpoint_display_name, keep) if enabled else ""


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def resolve_model(project: str, location: str, model: str) -> str:
    """The SavedModel folder batch prediction scores with, resolved when the step runs (a schedule follows the
    champion).

    Args:
        project: Google Cloud project of the Vertex AI Model Registry.
        location: Vertex AI region, e.g. us-central1.
        model: A Vertex model's display name or resource name (its `default` version, or @VERSION / @ALIAS), or a
            gs:// model base or SavedModel folder, passed on as it is.

    Returns:
        The gs:// folder to score with.
    """
    from components import logs
    from components.deploy.registry import model_artifact_uri

    logs.setup()
    return model_artifact_uri(project, location, model)
