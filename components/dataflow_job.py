"""The Dataflow job a step launches, reported the way GCPC's launchers report theirs and cancelled with the step.

Vertex AI Pipelines shows and cancels the cloud jobs a step lists in its `gcp_resources` output parameter: a
GcpResources message as JSON, `{"resources": [{"resourceType": "DataflowJob", "resourceUri":
"https://dataflow.googleapis.com/v1b3/projects/P/locations/L/jobs/ID"}]}` (GCPC's Dataflow launcher,
google_cloud_pipeline_components/container/v1/dataflow/dataflow_python_job_remote_runner.py). When a run is
cancelled its steps get SIGTERM; GCPC's launchers then cancel their job (container/utils/execution_context.py).
A step that runs Beam's DataflowRunner itself does both here: Beam logs the new job's id ("Created job with id:
[%s]", apache_beam/runners/dataflow/internal/apiclient.py) as soon as Dataflow answers, which this module catches
to write gcp_resources at once, and a SIGTERM asks Dataflow to cancel the job (Beam's own client, so the same
endpoint and credentials as the launch) before the step exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

BEAM_CLIENT_LOGGER = "apache_beam.runners.dataflow.internal.apiclient"
CREATED = "Created job with id: [%s]"
CANCELLED = "JOB_STATE_CANCELLED"


def resource_uri(project: str, location: str, job_id: str) -> str:
    return f"https://dataflow.googleapis.com/v1b3/projects/{project}/locations/{location}/jobs/{job_id}"


def gcp_resources(project: str, location: str, job_id: str) -> dict:
    """The GcpResources JSON GCPC's Dataflow launcher writes for a job."""
    return {"resources": [{"resourceType": "DataflowJob", "resourceUri": resource_uri(project, location, job_id)}]}


class _JobCatcher(logging.Handler):
    """Catches Beam's log record of the job it created."""

    def __init__(self, on_created):
        super().__init__(logging.INFO)
        self.on_created = on_created

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == CREATED and record.args:
            self.on_created(str(record.args[0]))


@contextlib.contextmanager
def reported(output_path: str, pipeline_args: list[str]) -> Iterator[None]:
    """While the block runs Beam with `pipeline_args`: the Dataflow job it creates is written to output_path (the
    step's gcp_resources) as soon as it exists, and a SIGTERM cancels that job and ends the step (exit 143). Not
    on Dataflow (no --project/--region in the args), output_path gets an empty GcpResources ({})."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    with open(output_path, "w") as f:
        f.write("{}")
    options = PipelineOptions(pipeline_args)
    cloud = options.view_as(GoogleCloudOptions)
    job: dict = {}

    def created(job_id: str) -> None:
        from apache_beam.runners.dataflow.internal.apiclient import DataflowApplicationClient

        job["id"] = job_id
        job["client"] = DataflowApplicationClient(options)  # what launched it: same endpoint and credentials
        with open(output_path, "w") as f:
            json.dump(gcp_resources(cloud.project, cloud.region, job_id), f)
        log.info("Dataflow job %s reported in gcp_resources", resource_uri(cloud.project, cloud.region, job_id))

    def cancel(signum, frame) -> None:
        if "id" in job:
            log.warning("SIGTERM: cancelling Dataflow job %s", job["id"])
            try:
                job["client"].modify_job_state(job["id"], CANCELLED)
            except Exception as e:  # noqa: BLE001 - the step ends anyway; say why the job may still run
                log.error("could not cancel Dataflow job %s: %s: %s", job["id"], type(e).__name__, e)
        raise SystemExit(128 + signum)

    catcher = _JobCatcher(created)
    beam_client = logging.getLogger(BEAM_CLIENT_LOGGER)
    level = beam_client.level
    beam_client.setLevel(logging.INFO)  # the record is INFO; the handler sees it whatever the root's level
    beam_client.addHandler(catcher)
    main = threading.current_thread() is threading.main_thread()  # only there can a signal handler be set
    previous = signal.signal(signal.SIGTERM, cancel) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        beam_client.removeHandler(catcher)
        beam_client.setLevel(level)
