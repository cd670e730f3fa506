from typing import Dict, Optional

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def batch_predict(
    source: str,
    model: str,
    predictions: Output[Dataset],
    metrics: Output[Metrics],
    gcp_resources: dsl.OutputPath(str),
    batch_size: int = 32,
    max_file_bytes: int = 0,
    runner: str = "DirectRunner",
    dataflow_project: str = "",
    dataflow_region: str = "",
    dataflow_temp_location: str = "",
    dataflow_sdk_container_image: str = "",
    dataflow_service_account: str = "",
    dataflow_machine_type: str = "",
    dataflow_max_workers: int = 0,
    dataflow_job_name: str = "",
    dataflow_subnetwork: str = "",
    dataflow_labels: Optional[Dict[str, str]] = None,
    dataflow_endpoint: str = "",
):
    """Scores a folder or CSV of images with a model's newest version (Apache Beam RunInference), locally or on
    Dataflow, and registers the predictions as a Dataset: predictions-*.jsonl (image_uri, label, probabilities,
    model, version) and errors-*.csv (image_uri,reason) for every input that could not be scored.

    Args:
        source: Images to score: a folder (gs://bucket/prefix or local; <label>/<file>, <split>/<label>/<file>
            or flat) or a CSV with an image_uri column.
        model: A model base holding numbered versions <base>/<N>/saved_model.pb (the newest one is used), or one
            SavedModel folder.
        predictions: The output folder: predictions-*.jsonl and errors-*.csv; its metadata holds the counts and
            the model's name and version.
        metrics: The counts of predictions and errors.
        batch_size: Images per model call.
        max_file_bytes: A larger input file is an error row, not read; 0: the default, 64 MiB.
        runner: DirectRunner (in this step's container) or DataflowRunner.
        dataflow_project: Dataflow's project (DataflowRunner only).
        dataflow_region: Dataflow's region, e.g. europe-west4.
        dataflow_temp_location: A gs:// folder for Dataflow's staging and temporary files.
        dataflow_sdk_container_image: The workers' image: the catsdogs components image.
        dataflow_service_account: The workers' service account email (empty: the Compute Engine default).
        dataflow_machine_type: The workers' machine type, e.g. n1-standard-4 (empty: Dataflow's default).
        dataflow_max_workers: The autoscaling limit (0: Dataflow's default).
        dataflow_job_name: The Dataflow job's name (empty: generated).
        dataflow_subnetwork: The workers' subnetwork, regions/R/subnetworks/S or a URL (empty: the default).
        dataflow_labels: Labels of the Dataflow job.
        dataflow_endpoint: Dataflow's API URL (empty: Beam's default, https://dataflow.googleapis.com).
        gcp_resources: The Dataflow job this step launched, in GCPC's format (GcpResources JSON), written as soon as
            the job exists: Vertex links it and cancels it with the run ({} when not on Dataflow).
    """
    from components import dataflow_job, logs, tracking
    from components.batch_predict.core import batch_predict as run_batch_prediction
    from components.beam_runner import dataflow_args
    from components.contracts import MAX_FILE_BYTES
    from components.step_summary import write_summary

    logs.setup()
    args = []
    if runner == "DataflowRunner":
        args = dataflow_args(
            project=dataflow_project, region=dataflow_region, temp_location=dataflow_temp_location,
            sdk_container_image=dataflow_sdk_container_image, service_account=dataflow_service_account,
            machine_type=dataflow_machine_type, max_workers=dataflow_max_workers, job_name=dataflow_job_name,
            # The run's labels too (its id among them), as Vertex asks of steps that create cloud resources.
            subnetwork=dataflow_subnetwork, labels={**tracking.vertex_run_labels(), **(dataflow_labels or {})},
        ) + ([f"--dataflow_endpoint={dataflow_endpoint}"] if dataflow_endpoint else [])
    with dataflow_job.reported(gcp_resources, args):
        summary = run_batch_prediction(source, model, predictions.uri, batch_size, runner, args,
                                       max_file_bytes=max_file_bytes or MAX_FILE_BYTES)
    metrics.log_metric("predictions", summary.predictions)
    metrics.log_metric("errors", summary.errors)
    predictions.metadata.update({"source": source, "model": summary.model, "version": summary.version,
                                 "predictions": summary.predictions, "errors": summary.errors})
    write_summary(predictions, f"{summary.predictions} predictions by version {summary.version}, "
                               f"{summary.errors} errors")
