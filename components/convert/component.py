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
):
    """Converts the CSV's images to sharded TFRecords with Apache Beam, locally or on Dataflow.
    record_format "jpeg" stores JPEG bytes; "tfrecorder" stores TFRecorder's base64 raw pixels (gzip).
    Bad images are listed with a reason in errors-*.csv beside the records."""
    from components import logs
    from components.convert.pipeline import convert as run_conversion, dataflow_args

    logs.setup()
    args = []
    if runner == "DataflowRunner":
        args = dataflow_args(
            project=dataflow_project, region=dataflow_region, temp_location=dataflow_temp_location,
            sdk_container_image=dataflow_sdk_container_image, service_account=dataflow_service_account,
            machine_type=dataflow_machine_type, max_workers=dataflow_max_workers, job_name=dataflow_job_name,
            subnetwork=dataflow_subnetwork, labels=dataflow_labels,
        )
    summary = run_conversion(image_csv.uri, tfrecords.uri, record_format, compression or None, num_shards,
                             max_error_fraction, runner, args)
    for name in ("rows", "good", "bad", "duplicates", "discarded"):
        metrics.log_metric(name, getattr(summary, name))
    tfrecords.metadata.update({"labels": summary.labels, "per_split": summary.per_split, "format": summary.format})
