"""The Vertex AI drift-monitoring pipeline: one step, `catsdogs monitor` on the served model base and the
server's request log in GCS, for `catsdogs schedule --pipeline monitor` to run daily:

    catsdogs schedule --pipeline monitor --cron "0 6 * * *" --pipeline-root gs://B/pipeline-root \\
        --param model_base=gs://B/models/catsdogs --param logs=gs://B/request-logs

The step fails on drift (fail_on_drift, default true here), so the failed run is the alert; its report
(monitor.html) and monitor.json are the step's outputs either way.
"""

from kfp import compiler, dsl

from components import tracking
from components.images import LOCAL, Images, with_image
from components.monitor.component import monitor_drift
from components.monitor.profile import DEFAULT_ALPHA, DEFAULT_MIN_REQUESTS
from components.tracking_component import wandb_settings


def build_monitor_pipeline(images: Images = LOCAL):
    components_image = images.components

    @dsl.pipeline(name="catsdogs-monitor",
                  description="Compares the requests logged in the window with the served version's baseline.")
    def monitor_pipeline(
        model_base: str,
        logs: str,
        since: str = "24h",
        min_requests: int = DEFAULT_MIN_REQUESTS,
        alpha: float = DEFAULT_ALPHA,
        fail_on_drift: bool = True,
        wandb_project: str = tracking.PROJECT,
        wandb_mode: str = "disabled",
        wandb_secret: str = "",  # projects/P/secrets/NAME holding the W&B API key (online), read at run time
        wandb_group: str = "",
    ):
        """model_base: the served gs:// model base; logs: the server's request-log folder; since: the window
        (ISO 8601 time or 30m / 24h / 7d back from the run); wandb_*: the W&B run of the verdict, p-values and
        effect sizes (disabled by default)."""
        settings = with_image(wandb_settings, components_image)(
            project=wandb_project, mode=wandb_mode, group=wandb_group, secret=wandb_secret, gcp_project="",
            pipeline_run="").set_display_name("W&B settings")
        with_image(monitor_drift, components_image)(
            model_base=model_base, logs=logs, since=since, min_requests=min_requests, alpha=alpha,
            fail_on_drift=fail_on_drift, wandb_settings=settings.output,
        ).set_display_name("drift monitor").set_caching_options(False)  # new requests every run

    return monitor_pipeline


def compile_monitor_pipeline(output: str, images: Images = LOCAL) -> None:
    compiler.Compiler().compile(build_monitor_pipeline(images), package_path=output)
