from typing import Dict, Optional

from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint, VertexModel
from kfp import dsl
from kfp.dsl import Input, Model, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def deploy_local(model: Input[Model], model_base: str, wandb_settings: Optional[Dict[str, str]] = None) -> int:
    """Publishes the SavedModel as the next numbered version under model_base (TF Serving's layout), where
    `catsdogs serve` picks it up.

    Args:
        model: The SavedModel to publish (the train step's output).
        model_base: Folder of the numbered versions, local or gs://; the new one is the newest plus one.
        wandb_settings: W&B settings (tracking.settings); when given the step is a W&B run: model in, endpoint
            (the model base and version) out.

    Returns:
        The version number published.
    """
    from components import logs, tracking
    from components.model_store import publish_version
    from components.step_summary import write_summary

    logs.setup()
    with tracking.step_run("deploy", "deploy", wandb_settings, {"model_base": model_base}) as run:
        run.use("model", model.uri)
        version = publish_version(model.uri, model_base)
        run.log_endpoint(tracking.reference(model_base), str(version))
    write_summary(None, f"published version {version}")
    return version


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def find_model(project: str, location: str, display_name: str) -> str:
    """The newest Vertex model with this display name: the parent that a new upload becomes a version of.

    Args:
        project: Google Cloud project of the Model Registry.
        location: Region of the Model Registry, e.g. us-central1.
        display_name: The models' display name.

    Returns:
        The model's resource name ("" when there is none).
    """
    from components import logs
    from components.deploy.vertex import find_model as find

    logs.setup()
    return find(project, location, display_name)


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def find_or_create_endpoint(project: str, location: str, display_name: str, endpoint: Output[VertexEndpoint]):
    """The newest Vertex endpoint with this display name, created only when there is none, so every run
    deploys to the same endpoint (GCPC's EndpointCreateOp makes a new one per run).

    Args:
        project: Google Cloud project of the endpoint.
        location: Region of the endpoint, e.g. us-central1.
        display_name: The endpoint's display name.
        endpoint: The endpoint found or created: its API URL, and its resourceName in the metadata.
    """
    from components import logs
    from components.deploy.vertex import api_endpoint
    from components.deploy.vertex import find_or_create_endpoint as find_or_create

    logs.setup()
    name = find_or_create(project, location, display_name).name
    endpoint.uri = f"https://{api_endpoint(location)}/v1/{name}"
    endpoint.metadata["resourceName"] = name


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def record_deployment(model: Input[Model], vertex_model: Input[VertexModel], endpoint: Input[VertexEndpoint],
                      wandb_settings: Optional[Dict[str, str]] = None, pipeline_job: str = ""):
    """The deploy step's W&B run on Vertex, after GCPC's deploy op (which cannot call our tracking): the
    trained model in, the endpoint (its URI and the uploaded model version) out; this step is never a cache hit.

    Args:
        model: The trained SavedModel (the train step's output).
        vertex_model: The model uploaded to the Model Registry (GCPC's upload op's output).
        endpoint: The endpoint the model was deployed to.
        wandb_settings: W&B settings (tracking.settings); without them the step does nothing.
        pipeline_job: The run's name, in the W&B run's config: it ties the W&B group, the run's id, to the Vertex
            pipeline job.
    """
    from components import logs, tracking

    logs.setup()
    config = {"endpoint": endpoint.uri, "pipeline_job": pipeline_job}
    with tracking.step_run("deploy", "deploy", wandb_settings, config) as run:
        run.use("model", model.uri)
        run.log_endpoint(endpoint.uri, vertex_model.metadata.get("resourceName", vertex_model.uri))


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def undeploy_previous(project: str, location: str, endpoint: Input[VertexEndpoint], model_display_name: str,
                      keep: int = 0) -> int:
    """Undeploys the endpoint's earlier deployments of this model once the new one takes all the traffic: each
    would otherwise stay deployed at 0% traffic on dedicated nodes, billed as if it served. The versions stay in
    the Model Registry, to be deployed again.

    Args:
        project: Google Cloud project of the endpoint.
        location: Region of the endpoint, e.g. us-central1.
        endpoint: The endpoint the new model was deployed to (its metadata holds resourceName).
        model_display_name: Only deployments with this display name are undeployed; other models sharing the
            endpoint are left alone, and so is any deployment that takes traffic.
        keep: How many of the newest previous deployments to leave deployed for an instant rollback (each costs
            its nodes).

    Returns:
        How many deployments were undeployed.
    """
    from components import logs
    from components.deploy.vertex import undeploy_previous as undeploy

    logs.setup()
    return len(undeploy(project, location, endpoint.metadata["resourceName"], model_display_name, keep))
