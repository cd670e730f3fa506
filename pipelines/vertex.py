"""The Vertex AI Pipelines DAG: the local DAG's components, with conversion on Dataflow, training as a
Vertex custom job on the chosen machine preset, and deployment through GCPC's model upload, endpoint and
deploy ops (only when evaluation passes the accuracy gate)."""


from google_cloud_pipeline_components.types import artifact_types
from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component
from google_cloud_pipeline_components.v1.endpoint import ModelDeployOp
from google_cloud_pipeline_components.v1.model import ModelUploadOp
from kfp import compiler, dsl
from kfp.dsl import Artifact, Input

from components import tracking
from components.beam_config import PIPELINE_DATAFLOW
from components.contracts import DEFAULT_RECORD_FORMAT, LOG_REQUESTS_ENV, LOG_SAMPLE_RATE_ENV
from components.convert.component import convert
from components.deploy.component import find_model, find_or_create_endpoint, record_deployment, undeploy_previous
from components.deploy.config import DEPLOY
from components.deploy.registry import CHALLENGER_ALIAS
from components.deploy.registry_components import (
    canary_traffic_split,
    champion_uri,
    check_canary_percent,
    import_evaluation,
    new_version_aliases,
)
from components.deploy.registry_components import promote_canary as promote_canary_step
from components.deploy.vertex import HEALTH_ROUTE, PREDICT_ROUTE, SERVING_PORT
from components.errors import InputError
from components.evaluate.component import evaluate
from components.evaluate.config import GATE
from components.evaluate.saliency import SALIENCY_IMAGES
from components.export.component import export
from components.images import LOCAL, Images, with_image
from components.prepare.component import prepare
from components.serve_check.component import check_serving
from components.tracking_component import wandb_settings
from components.train.component import train
from components.train.config import TrainConfig
from components.validate.component import validate
from components.validate.config import VALIDATE
from pipelines.dag import Steps, blessed, refused_by_evaluation, training_arguments, validation_arguments, wire
from pipelines.machines import machine_spec

TRAINING = TrainConfig()  # the training parameters' defaults, written once in TrainConfig


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def artifact_uri(artifact: Input[Artifact]) -> str:
    """The artifact's storage URI, for importing the trained SavedModel as a Vertex model.

    Args:
        artifact: Any artifact; its URI (gs://...) is returned.

    Returns:
        The artifact's URI.
    """
    return artifact.uri


def build_vertex_pipeline(images: Images = LOCAL, machine: str = "T4_1X", replicas: int = 1):
    """The Vertex pipeline function, with its steps' images and the training machines fixed at compile time:
    `replicas` machines of the `machine` preset (one chief, the rest workers: multi-node training)."""
    if replicas < 1:
        raise InputError(f"--replicas must be at least 1, got {replicas}")
    spec = machine_spec(machine)
    components_image = images.components
    train_job = create_custom_training_job_from_component(
        with_image(train, images.trainer), display_name="catsdogs-train", machine_type=spec.machine_type,
        accelerator_type=spec.accelerator_type, accelerator_count=spec.accelerator_count or 1,
        replica_count=replicas,
    )

    @dsl.pipeline(name="catsdogs", description="Labelled images in GCS to an image classifier on a Vertex AI endpoint.")
    def vertex_pipeline(
        project: str,
        images_root: str,
        dataflow_temp_location: str,
        location: str = "us-central1",
        epochs: int = TRAINING.epochs,
        batch_size: int = TRAINING.batch_size,
        image_size: int = TRAINING.image_size,
        learning_rate: float = TRAINING.learning_rate,
        architecture: str = TRAINING.architecture,
        weights: str = TRAINING.weights,
        augment: bool = TRAINING.augment,
        fine_tune_epochs: int = TRAINING.fine_tune_epochs,
        calibrate: bool = TRAINING.calibrate,
        threshold: float = TRAINING.threshold,
        target_precision: float = TRAINING.target_precision,
        target_recall: float = TRAINING.target_recall,
        record_format: str = DEFAULT_RECORD_FORMAT,
        validate_fix: bool = VALIDATE.fix,
        max_leakage: int = VALIDATE.max_leakage,
        near_duplicate_distance: int = VALIDATE.near_duplicate_distance,
        min_accuracy: float = GATE.min_accuracy,
        max_regression: float = GATE.max_regression,
        canary_traffic_percent: int = DEPLOY.traffic_percent,
        promote_canary: bool = False,
        model_display_name: str = DEPLOY.model_display_name,
        endpoint_display_name: str = DEPLOY.endpoint_display_name,
        deploy_machine_type: str = DEPLOY.machine_type,
        deploy_min_replicas: int = DEPLOY.min_replicas,
        deploy_max_replicas: int = DEPLOY.max_replicas,
        deploy_keep_previous: int = DEPLOY.keep_previous,
        log_requests: str = DEPLOY.log_requests,  # the endpoint's serving container logs sampled requests there
        log_sample_rate: float = DEPLOY.log_sample_rate,
        dataflow_machine_type: str = PIPELINE_DATAFLOW.machine_type,
        dataflow_max_workers: int = PIPELINE_DATAFLOW.max_workers,
        dataflow_subnetwork: str = "",
        service_account: str = "",
        wandb_project: str = tracking.PROJECT,
        wandb_mode: str = "disabled",
        wandb_secret: str = "",  # Secret Manager secret holding the W&B API key, read by each step at run time
        wandb_group: str = "",
        export_formats: str = "",  # e.g. "onnx,tflite:int8": TFLite / ONNX files measured against the SavedModel
        max_p99_ms: float = 0.0,  # the serving check's limits (0: none)
        min_throughput: float = 0.0,
        max_memory_mb: float = 0.0,
        intended_use: str = "",  # the model card's (empty: model_card.DEFAULT_INTENDED_USE)
        saliency_images: int = SALIENCY_IMAGES,  # report images with a saliency overlay
    ):
        """The shared DAG (pipelines/dag.py) with conversion on Dataflow and training as a custom job on the
        machines chosen at compile time. The candidate is scored against the model's `default` version on the same
        images; a blessed one (min_accuracy reached, not worse than the champion by more than max_regression)
        is deployed with canary_traffic_percent of the endpoint's traffic: below 100 as the `canary` version (the
        champion keeps `default` and the rest of the traffic until `catsdogs promote`, or the next run with
        promote_canary, moves both to it; `catsdogs rollback` removes it), at 100 as the new `default`. A rejected
        candidate is kept as the `challenger` version, not deployed. The service account runs the Dataflow
        workers and the training job (empty: the defaults)."""
        steps = Steps(
            prepare=with_image(prepare, components_image),
            validate=with_image(validate, components_image),
            convert=with_image(convert, components_image),
            train=train_job,
            evaluate=with_image(evaluate, components_image),
            wandb_settings=with_image(wandb_settings, components_image),
            export=with_image(export, components_image),
            check_serving=with_image(check_serving, images.serving),  # proves the image Vertex will serve with
            convert_options=dict(
                runner="DataflowRunner", dataflow_project=project, dataflow_region=location,
                dataflow_temp_location=dataflow_temp_location, dataflow_sdk_container_image=components_image,
                dataflow_service_account=service_account, dataflow_machine_type=dataflow_machine_type,
                dataflow_max_workers=dataflow_max_workers, dataflow_subnetwork=dataflow_subnetwork,
                dataflow_labels={"app": "catsdogs"},
            ),
            train_options=dict(project=project, location=location, service_account=service_account),
            convert_name="convert to TFRecords (Dataflow)",
            train_name=f"train ({machine} x{replicas})",
        )

        # Checked before anything is uploaded.
        checked = with_image(check_canary_percent, components_image)(
            canary_traffic_percent=canary_traffic_percent).set_display_name("check canary traffic percent")
        promoted = with_image(promote_canary_step, components_image)(
            project=project, location=location, model_display_name=model_display_name,
            endpoint_display_name=endpoint_display_name, enabled=promote_canary, keep=deploy_keep_previous,
        ).set_display_name("promote canary (if asked)").set_caching_options(False)
        # The champion: the model's `default` version, scored on the candidate's held-out split.
        champion = with_image(champion_uri, components_image)(
            project=project, location=location, model_display_name=model_display_name,
        ).after(promoted).set_display_name("find champion (default version)").set_caching_options(False)
        wired = wire(
            steps, images_root=images_root, record_format=record_format, training=training_arguments(locals()),
            validation=validation_arguments(locals()),
            min_accuracy=min_accuracy, champion_uri=champion.output, max_regression=max_regression,
            # No run name in the settings every step takes, so that a re-run's unchanged steps hit Vertex's cache;
            # each step's W&B run finds its pipeline run's id in the environment (tracking.run_group).
            wandb=dict(project=wandb_project, mode=wandb_mode, group=wandb_group, secret=wandb_secret,
                       gcp_project=project, pipeline_run=""),
            export_formats=export_formats,
            serving=dict(max_p99_ms=max_p99_ms, min_throughput=min_throughput, max_memory_mb=max_memory_mb),
            explain=dict(intended_use=intended_use, saliency_images=saliency_images),
        )
        model_uri = with_image(artifact_uri, components_image)(
            artifact=wired.train.outputs["model"]).set_display_name("model URI")
        serving_model = dsl.importer(
            artifact_uri=model_uri.output,
            artifact_class=artifact_types.UnmanagedContainerModel,
            metadata={"containerSpec": {
                "imageUri": images.serving,
                "healthRoute": HEALTH_ROUTE,
                "predictRoute": PREDICT_ROUTE,
                "ports": [{"containerPort": SERVING_PORT}],
                # components/serve/server.py reads these; an empty folder leaves logging off.
                "env": [{"name": LOG_REQUESTS_ENV, "value": log_requests},
                        {"name": LOG_SAMPLE_RATE_ENV, "value": f"{log_sample_rate}"}],
            }},
        ).set_display_name("serving model")
        # Each run adds a version to the model of this name rather than a new model.
        parent = with_image(find_model, components_image)(
            project=project, location=location, display_name=model_display_name
        ).set_display_name("find model").set_caching_options(False)  # a cached answer would be stale

        def upload_version(aliases, parent_name: str, upload_name: str):
            """The trained model as a new version of the existing model, with `aliases` (a list or a step's)."""
            parent_model = dsl.importer(
                artifact_uri=parent.output, artifact_class=artifact_types.VertexModel,
                metadata={"resourceName": parent.output},
            ).set_display_name(parent_name)
            return ModelUploadOp(
                project=project, location=location, display_name=model_display_name,
                unmanaged_container_model=serving_model.outputs["artifact"],
                parent_model=parent_model.output, version_aliases=aliases,
            ).after(checked).set_display_name(upload_name)

        with blessed(wired):  # a new default version, its evaluation in the registry, deployed (canary)
            # Rolls back an earlier canary still in place, then names the new version's alias.
            aliases = with_image(new_version_aliases, components_image)(
                project=project, location=location, model_display_name=model_display_name,
                endpoint_display_name=endpoint_display_name, canary_traffic_percent=checked.output,
            ).set_display_name("version alias (canary or default)").set_caching_options(False)
            with dsl.If(parent.output != "", name="model-exists"):
                new_version = upload_version(aliases.output, "parent model", "upload model version")
            with dsl.Else(name="new-model"):
                new_model = ModelUploadOp(
                    project=project, location=location, display_name=model_display_name,
                    unmanaged_container_model=serving_model.outputs["artifact"],
                ).after(checked).set_display_name("upload model")
            uploaded = dsl.OneOf(new_version.outputs["model"], new_model.outputs["model"])
            with_image(import_evaluation, components_image)(
                vertex_model=uploaded, evaluation=wired.evaluate.outputs["evaluation"],
            ).set_display_name("import evaluation (Model Registry)")
            endpoint = with_image(find_or_create_endpoint, components_image)(
                project=project, location=location, display_name=endpoint_display_name
            ).set_display_name("find or create endpoint").set_caching_options(False)
            split = with_image(canary_traffic_split, components_image)(
                endpoint=endpoint.outputs["endpoint"], canary_traffic_percent=checked.output,
            ).after(aliases).set_display_name("traffic split (canary)").set_caching_options(False)
            deployed = ModelDeployOp(
                model=uploaded,
                endpoint=endpoint.outputs["endpoint"],
                dedicated_resources_machine_type=deploy_machine_type,
                dedicated_resources_min_replica_count=deploy_min_replicas,
                dedicated_resources_max_replica_count=deploy_max_replicas,
                traffic_split=split.output,
            ).set_display_name("deploy to endpoint")
            with_image(record_deployment, components_image)(
                model=wired.train.outputs["model"], endpoint=endpoint.outputs["endpoint"],
                wandb_settings=wired.wandb_settings, vertex_model=uploaded,
                pipeline_job=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            ).after(deployed).set_display_name("record deployment (W&B)")
            # Older versions left at 0% traffic would keep billing their dedicated nodes: keep a few for rollback.
            with_image(undeploy_previous, components_image)(
                project=project, location=location, endpoint=endpoint.outputs["endpoint"],
                model_display_name=model_display_name, keep=deploy_keep_previous,
            ).after(deployed).set_display_name("undeploy previous").set_caching_options(False)
        with dsl.Else(name="rejected"):
            # A candidate evaluation rejected is kept in the registry as the `challenger`, never deployed; one the
            # serving check refused is not uploaded at all (it may not load in the serving image). A first run can
            # only be rejected by its own accuracy (no better than a constant guess, or below min_accuracy), and
            # then there is no model to add a version to: nothing uploads.
            with refused_by_evaluation(wired), dsl.If(parent.output != "", name="rejected-model-exists"):
                challenger = upload_version([CHALLENGER_ALIAS], "parent model (challenger)",
                                            "upload challenger version (not deployed)")
                with_image(import_evaluation, components_image)(
                    vertex_model=challenger.outputs["model"], evaluation=wired.evaluate.outputs["evaluation"],
                ).set_display_name("import challenger evaluation (Model Registry)")

    return vertex_pipeline


def compile_vertex_pipeline(output: str, images: Images = LOCAL, machine: str = "T4_1X", replicas: int = 1) -> None:
    compiler.Compiler().compile(build_vertex_pipeline(images, machine, replicas), package_path=output)
