from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint
from kfp import dsl
from kfp.dsl import Input, Model, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def deploy_local(model: Input[Model], model_base: str) -> int:
    """Publishes the SavedModel as the next numbered version under model_base (TF Serving's layout), where
    `catsdogs serve` picks it up, and returns the version number."""
    from components import logs
    from components.deploy.core import publish_version

    logs.setup()
    return publish_version(model.uri, model_base)


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def find_model(project: str, location: str, display_name: str) -> str:
    """The resource name of the newest Vertex model with this display name ("" when none): the parent that
    a new upload becomes a version of."""
    from components import logs
    from components.deploy.vertex import find_model as find

    logs.setup()
    return find(project, location, display_name)


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def find_or_create_endpoint(project: str, location: str, display_name: str, endpoint: Output[VertexEndpoint]):
    """The newest Vertex endpoint with this display name, created only when there is none, so every run
    deploys to the same endpoint (GCPC's EndpointCreateOp makes a new one per run)."""
    from components import logs
    from components.deploy.vertex import api_endpoint
    from components.deploy.vertex import find_or_create_endpoint as find_or_create

    logs.setup()
    name = find_or_create(project, location, display_name).name
    endpoint.uri = f"https://{api_endpoint(location)}/v1/{name}"
    endpoint.metadata["resourceName"] = name
