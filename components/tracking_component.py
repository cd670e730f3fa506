from typing import Dict

from kfp import dsl

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def wandb_settings(project: str, mode: str, group: str, secret: str, gcp_project: str,
                   pipeline_run: str) -> Dict[str, str]:
    """The W&B settings every later step takes, made at run time from plain pipeline parameters (a dict of
    placeholders nested in a constant is not certain to be resolved on Vertex; a step's output is).

    Args:
        project: The W&B project the step runs go to.
        mode: online, offline or disabled.
        group: The W&B group of the step runs; empty for the pipeline run's name.
        secret: Secret Manager secret holding the W&B API key (online on Vertex), read by each step when it runs.
        gcp_project: The Google Cloud project of that secret.
        pipeline_run: The pipeline run's name (dsl.PIPELINE_JOB_NAME_PLACEHOLDER) locally; empty on Vertex, whose
            cached steps must not take a per-run input (each step's run reads its run's id: tracking.run_group).

    Returns:
        The settings (tracking.settings): project, mode, group, secret, gcp_project, pipeline_run.
    """
    from components import tracking
    from components.step_summary import write_summary

    tracking.check_mode(mode)
    settings = tracking.settings(project, mode, group, secret, gcp_project, pipeline_run)
    write_summary(None, f"W&B {settings['mode']}, project {settings['project']}")
    return settings
