"""The Vertex AI batch-prediction pipeline: a folder or CSV of images in GCS scored on Dataflow by a Vertex model's
`default` version (the champion, looked up when the run starts) or a gs:// model, the predictions registered as a
KFP Dataset artifact.

Its parameters follow the training pipeline's names where they mean the same thing (project, location,
images_root, dataflow_temp_location, service_account), so `catsdogs submit` and `catsdogs schedule` build its
job the same way: `--pipeline batch-predict --images gs://... [--param model=catsdogs]`.
"""

from kfp import compiler, dsl

from components.batch_predict.component import batch_predict
from components.batch_predict.config import BATCH
from components.beam_config import PIPELINE_DATAFLOW
from components.deploy.registry_components import resolve_model
from components.errors import InputError
from components.images import LOCAL, Images, with_image

TRAINING, BATCH_PREDICT, MONITOR = "training", "batch-predict", "monitor"
PIPELINES = (TRAINING, BATCH_PREDICT, MONITOR)


def build_batch_pipeline(images: Images = LOCAL):
    """The pipeline function, with the components image fixed at compile time (it is also the Dataflow workers'
    SDK container)."""
    components_image = images.components

    @dsl.pipeline(name="catsdogs-batch-predict",
                  description="Scores a folder or CSV of images in GCS with a model's champion on Dataflow.")
    def batch_pipeline(
        project: str,
        images_root: str,
        dataflow_temp_location: str,
        model: str = "catsdogs",
        location: str = "us-central1",
        batch_size: int = BATCH.batch_size,
        dataflow_machine_type: str = PIPELINE_DATAFLOW.machine_type,
        dataflow_max_workers: int = PIPELINE_DATAFLOW.max_workers,
        dataflow_subnetwork: str = "",
        service_account: str = "",
    ):
        """images_root: the gs:// folder or CSV of images to score; model: a Vertex model's display name or
        resource name (its `default` version, or @VERSION / @ALIAS), or a gs:// base of numbered versions (the
        newest is used) or SavedModel folder. The service account runs the Dataflow workers."""
        resolved = with_image(resolve_model, components_image)(project=project, location=location, model=model) \
            .set_display_name("resolve model (default version)").set_caching_options(False)  # the champion changes
        with_image(batch_predict, components_image)(
            source=images_root, model=resolved.output, batch_size=batch_size, runner="DataflowRunner",
            dataflow_project=project, dataflow_region=location, dataflow_temp_location=dataflow_temp_location,
            dataflow_sdk_container_image=components_image, dataflow_service_account=service_account,
            dataflow_machine_type=dataflow_machine_type, dataflow_max_workers=dataflow_max_workers,
            dataflow_subnetwork=dataflow_subnetwork, dataflow_labels={"app": "catsdogs"},
        ).set_display_name("batch predict (Dataflow)").set_caching_options(False)  # the newest version changes

    return batch_pipeline


def compile_batch_pipeline(output: str, images: Images = LOCAL) -> None:
    compiler.Compiler().compile(build_batch_pipeline(images), package_path=output)


def compile_pipeline(pipeline: str, output: str, images: Images = LOCAL, machine: str = "T4_1X",
                     replicas: int = 1) -> None:
    """Compiles the named pipeline: `training` (pipelines/vertex.py; machine and replicas are its training
    machines), `batch-predict` (this module) or `monitor` (pipelines/monitor.py)."""
    if pipeline == TRAINING:
        from pipelines.vertex import compile_vertex_pipeline

        compile_vertex_pipeline(output, images, machine, replicas)
    elif pipeline == BATCH_PREDICT:
        compile_batch_pipeline(output, images)
    elif pipeline == MONITOR:
        from pipelines.monitor import compile_monitor_pipeline

        compile_monitor_pipeline(output, images)
    else:
        raise InputError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
