"""How a model version is deployed to a Vertex AI endpoint, written once: `catsdogs deploy`/`promote`'s flags,
VertexDeployment's defaults and the Vertex pipeline's deploy parameters come from DeployConfig."""

from __future__ import annotations

from dataclasses import dataclass

from components.options import option


@dataclass(frozen=True)
class DeployConfig:
    model_display_name: str = option("catsdogs", "(default %(default)s)")
    endpoint_display_name: str = option("catsdogs", "(default %(default)s)")
    version_aliases: str = option("", "comma-separated aliases for the new version, e.g. v2,candidate")
    machine_type: str = option("n1-standard-2", "(default %(default)s)")
    min_replicas: int = option(1, "autoscaling lower bound (default %(default)s)")
    max_replicas: int = option(1, "autoscaling upper bound (default %(default)s)")
    traffic_percent: int = option(100, "share of the endpoint's traffic for the new version (default %(default)s)")
    keep_previous: int = option(0, "earlier deployments of the model that take no traffic to leave deployed for "
                                   "rollback; the others are undeployed, as they bill their nodes "
                                   "(default %(default)s)")
    log_requests: str = option("", "gs:// folder the serving container logs a sample of its requests to, for "
                                   "`catsdogs monitor` (default: off)", metavar="GS_FOLDER")
    log_sample_rate: float = option(1.0, "share of images logged with --log-requests, in (0, 1] (default %(default)s)")


DEPLOY = DeployConfig()
