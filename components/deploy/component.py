from kfp import dsl
from kfp.dsl import Input, Model

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def deploy_local(model: Input[Model], model_base: str) -> int:
    """Publishes the SavedModel as the next numbered version under model_base (TF Serving's layout), where
    `catsdogs serve` picks it up, and returns the version number."""
    from components import logs
    from components.deploy.core import publish_version

    logs.setup()
    return publish_version(model.uri, model_base)
