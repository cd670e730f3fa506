from typing import Dict, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def convert(
    image_csv: Input[Dataset],
    tfrecords: Output[Dataset],
    metrics: Output[Metrics],
    record_format: str = "jpeg",
    compression: str = "",
    num_shards: int = 0,
    max_error_fraction: float = 0.05,
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
    wandb_settings: Optional[Dict[str, str]] = None,
):
    """Converts the CSV's images to sharded TFRecords with Apache Beam, locally or on Dataflow.
    record_format "jpeg" stores JPEG bytes; "tfrecorder" stores TFRecorder's base64 raw pixels (gzip).
    Bad images are listed with a reason in errors-*.csv beside the records.
    wandb_settings (tracking.pipeline_settings) makes it a W&B run: image_uris_csv in, tfrecords out."""
    from components import logs, tracking
    from components.convert.pipeline import convert as run_conversion
    from components.convert.pipeline import dataflow_args

    logs.setup()
    args = []
    if runner == "DataflowRunner":
        args = dataflow_args(
            project=dataflow_project, region=dataflow_region, temp_location=dataflow_temp_location,
            sdk_container_image=dataflow_sdk_container_image, service_account=dataflow_service_account,
            machine_type=dataflow_machine_type, max_workers=dataflow_max_workers, job_name=dataflow_job_name,
            subnetwork=dataflow_subnetwork, labels=dataflow_labels,
        )
    config = {"record_format": record_format, "compression": compression, "num_shards": num_shards,
              "max_error_fraction": max_error_fraction, "runner": runner, "dataflow_project": dataflow_project,
              "dataflow_region": dataflow_region, "dataflow_machine_type": dataflow_machine_type,
              "dataflow_max_workers": dataflow_max_workers, "dataflow_job_name": dataflow_job_name}
    with tracking.step_run("convert", wandb_settings, config) as run:
        run.use("image_uris_csv", image_csv.uri)
        summary = run_conversion(image_csv.uri, tfrecords.uri, record_format, compression or None, num_shards,
                                 max_error_fraction, runner, args)
        counts = {name: getattr(summary, name) for name in ("rows", "good", "bad", "duplicates", "discarded")}
        for name, value in counts.items():
            metrics.log_metric(name, value)
        tfrecords.metadata.update({"labels": summary.labels, "per_split": summary.per_split, "format": summary.format})
        run.log_output("tfrecords", tfrecords.uri, {**tfrecords.metadata, **counts})
