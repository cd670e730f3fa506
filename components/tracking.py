"""Weights & Biases tracking of the pipeline steps: the one module that talks to W&B.

Each step is one W&B run (name = the step, group = the pipeline run, config = the step's parameters). It logs
its outputs as artifacts with the classic cats-vs-dogs workflow's names, references (gs:// or file://) for big
data and files for small, and declares its inputs, so W&B draws the lineage graph.

Modes: "online" needs an API key (WANDB_API_KEY, or a Secret Manager secret read at run time on Vertex);
"offline" needs no account and leaves the runs under WANDB_DIR for `wandb sync`; "disabled" does nothing.
The key only ever lives in this process's environment: never in parameters, config, logs or messages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator

from components import storage
from components.errors import InputError

log = logging.getLogger(__name__)

PROJECT = "cats-dogs-keras"
MODES = ("online", "offline", "disabled")
# Artifact name -> (W&B type, logged as a file rather than a reference): the producer logs and the consumers declare
# an artifact built the same way, so W&B links them (the same digest). Steps name their artifacts and job type.
ARTIFACTS = {
    "training_images": ("raw_data", False),
    "image_uris_csv": ("dataset", True),
    "tfrecords": ("dataset", False),
    "model": ("model", False),
    "endpoint": ("endpoint", True),  # endpoint.json: model version and endpoint URI
}
DEFAULT_BASE_URL = "https://api.wandb.ai"
CONNECT_TIMEOUT_S = 5.0


def default_mode() -> str:
    """The local default: online with a key in the environment, offline (no account needed) without."""
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def settings(project: str, mode: str, group: str = "", secret: str = "", gcp_project: str = "",
             pipeline_run: str = "") -> dict[str, str]:
    """The `wandb_settings` every component takes: built at run time by the pipelines' first step (the
    wandb_settings component) from plain string parameters, so nothing depends on placeholders nested in a
    constant. The pipeline run's name becomes the W&B group when `group` is empty."""
    return {"project": project, "mode": mode, "group": group, "secret": secret, "gcp_project": gcp_project,
            "pipeline_run": pipeline_run}


# Vertex AI Pipelines hands every step its run's labels as JSON in this variable, for the step to put on the cloud
# resources it creates (cloud.google.com/vertex-ai/docs/pipelines/gcpc-label-propagation, "Resources generated from
# user-defined components"; GCPC's launchers do: container/v1/gcp_launcher/utils/gcp_labels_util.py), among them
# the run's id under the label key the PipelineJob API reserves (PipelineJob.labels).
VERTEX_RUN_LABELS = "VERTEX_AI_PIPELINES_RUN_LABELS"
VERTEX_RUN_ID_LABEL = "vertex-ai-pipelines-run-billing-id"


def vertex_run_labels() -> dict[str, str]:
    """The Vertex pipeline run's labels, when this step runs in one ({} elsewhere)."""
    try:
        labels = json.loads(os.environ.get(VERTEX_RUN_LABELS) or "{}")
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def run_group(settings: dict) -> str | None:
    """The W&B group of a step's run: the settings' group, else the pipeline run's name when the settings carry it
    (local runs), else the Vertex pipeline run's id from the step's environment, read when the step runs (not a
    step input, so cached steps stay cached), else W&B's own WANDB_RUN_GROUP (None)."""
    named = settings.get("group") or settings.get("pipeline_run")
    if named:
        return named
    run_id = vertex_run_labels().get(VERTEX_RUN_ID_LABEL)
    return f"vertex-{run_id}" if run_id else None


def local_dirs(workdir: str) -> dict[str, str]:
    """Environment that puts W&B's runs, staging copies, cache and config under workdir instead of the home
    directory (runs land in workdir/wandb)."""
    base = os.path.join(os.path.abspath(workdir), "wandb")
    return {"WANDB_DIR": os.path.dirname(base), "WANDB_DATA_DIR": os.path.join(base, "data"),
            "WANDB_CACHE_DIR": os.path.join(base, "cache"), "WANDB_CONFIG_DIR": os.path.join(base, "config")}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"--wandb-mode must be one of {', '.join(MODES)}, got {mode!r}")


def check_online(key: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fails within `timeout`, saying what to do, when online mode has no key or cannot reach the W&B server
    (wandb.init itself retries for minutes)."""
    if not key:
        raise InputError("W&B online mode needs an API key: set WANDB_API_KEY (on Vertex, the wandb_secret "
                         "parameter), or use --wandb-mode offline")
    url = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"W&B online mode cannot reach {url} ({e.strerror or e}); check the network, or run "
                         "with --wandb-mode offline and upload the runs later with `wandb sync`") from None


def secret_version(secret: str, gcp_project: str) -> str:
    """A Secret Manager version name from `projects/P/secrets/S[/versions/V]` or a short secret name."""
    if secret.startswith("projects/"):
        return secret if "/versions/" in secret else f"{secret}/versions/latest"
    if not gcp_project:
        raise InputError(f"W&B key secret {secret!r}: give projects/PROJECT/secrets/NAME or the GCP project")
    return f"projects/{gcp_project}/secrets/{secret}/versions/latest"


def read_secret(name: str, client=None) -> str:
    """The secret's value; errors name the secret, never its value."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.cloud import secretmanager

    client = client or secretmanager.SecretManagerServiceClient()
    try:
        response = client.access_secret_version(request={"name": name}, timeout=30)
    except GoogleAPICallError as e:
        raise InputError(f"cannot read the W&B API key from Secret Manager {name}: {e.message}") from None
    return response.payload.data.decode("utf-8").strip()


def api_key(secret: str = "", gcp_project: str = "") -> str | None:
    """WANDB_API_KEY from the environment, else the Secret Manager secret when one is named."""
    key = os.environ.get("WANDB_API_KEY")
    if key or not secret:
        return key
    return read_secret(secret_version(secret, gcp_project))


def reference(uri: str) -> str:
    return uri if storage.is_gcs(uri) else pathlib.Path(uri).absolute().as_uri()


class StepRun:
    """One step's W&B run; every method does nothing when tracking is disabled (run is None)."""

    def __init__(self, run=None, offline: bool = False):
        self.run = run
        self.offline = offline
        self.inputs: dict[str, str] = {}

    def _artifact(self, name: str, uri: str, metadata: dict | None = None):
        import wandb

        kind, as_file = ARTIFACTS[name]
        artifact = wandb.Artifact(name, type=kind, metadata=metadata)
        if as_file:
            with artifact.new_file(os.path.basename(uri.rstrip("/")), mode="wb") as f:
                f.write(storage.read_bytes(uri))
        else:
            artifact.add_reference(reference(uri))
        return artifact

    def use(self, name: str, uri: str) -> None:
        """Declares an input. Online, an artifact built exactly as its producer logged it has the same digest,
        so W&B links this run to that version. Offline the SDK refuses use_artifact: the input is recorded as
        a reference in the run config."""
        if self.run is None:
            return
        if self.offline:
            self.inputs[name] = reference(uri)
            self.run.config.update({"inputs": dict(self.inputs)}, allow_val_change=True)
        else:
            self.run.use_artifact(self._artifact(name, uri))

    def log_output(self, name: str, uri: str, metadata: dict | None = None) -> None:
        if self.run is not None:
            self.run.log_artifact(self._artifact(name, uri, metadata))

    def log_endpoint(self, endpoint: str, model_version: str) -> None:
        """The deployment as a small `endpoint` artifact: which model version serves where."""
        if self.run is None:
            return
        import wandb

        info = {"endpoint": endpoint, "model_version": model_version}
        artifact = wandb.Artifact("endpoint", type=ARTIFACTS["endpoint"][0], metadata=info)
        with artifact.new_file("endpoint.json") as f:
            json.dump(info, f, indent=1)
        self.run.log_artifact(artifact)

    def keras_callbacks(self) -> list:
        if self.run is None:
            return []
        from wandb.integration.keras import WandbMetricsLogger

        return [WandbMetricsLogger(log_freq="epoch")]

    def log_evaluation(self, result) -> None:
        """Metrics, the confusion matrix and a table of the held-out images evaluation picked for its report
        (mistakes first), with predicted and true labels: evaluation owns its predictions, this only logs them."""
        if self.run is None:
            return
        import io
        import math

        import wandb
        from PIL import Image

        split = result.split.lower()
        metrics = {f"{split}/accuracy": result.accuracy, "examples": result.examples}
        if math.isfinite(result.auc):
            metrics[f"{split}/auc"] = result.auc
        for name, scores in result.per_class().items():
            metrics.update({f"{split}/{metric}_{name}": value for metric, value in scores.items()})
        matrix = result.confusion_matrix
        k = len(matrix)
        y_true = [i for i in range(k) for j in range(k) for _ in range(matrix[i][j])]
        y_pred = [j for i in range(k) for j in range(k) for _ in range(matrix[i][j])]
        metrics["confusion_matrix"] = wandb.plot.confusion_matrix(
            y_true=y_true, preds=y_pred, class_names=result.class_names)
        table = wandb.Table(columns=["image", "true", "predicted", "probability"])
        for example in result.gallery:
            image = Image.open(io.BytesIO(example.thumbnail))
            table.add_data(wandb.Image(image), example.true, example.predicted, example.confidence)
        metrics["predictions"] = table
        self.run.log(metrics)  # the run summary keeps the last logged values


def _use_private_dirs() -> None:
    """Keeps W&B's files out of the home directory when the caller did not place them (a Vertex container)."""
    if "WANDB_DIR" not in os.environ:
        os.environ.update(local_dirs(tempfile.mkdtemp(prefix="catsdogs-wandb-")))


@contextlib.contextmanager
def step_run(step: str, job_type: str, settings: dict | None, config: dict,
             primary: bool = True) -> Iterator[StepRun]:
    """The W&B run of one pipeline step (named `step`, of W&B job type `job_type`: data, train, deploy ...),
    finished (as failed if the step raises) when the block ends. `primary` is False on the workers of a
    multi-node job that must not log a run of their own."""
    settings = settings or {}
    mode = settings.get("mode") or "disabled"
    check_mode(mode)
    if mode == "disabled" or not primary:
        yield StepRun()
        return
    _use_private_dirs()
    if mode == "online":
        key = api_key(settings.get("secret", ""), settings.get("gcp_project", ""))
        check_online(key)
        os.environ["WANDB_API_KEY"] = key  # this process only: W&B reads it here
    import wandb

    run = wandb.init(
        project=settings.get("project") or PROJECT, name=step, job_type=job_type,
        group=run_group(settings), config=config, mode=mode,
        settings=wandb.Settings(init_timeout=60),
    )
    log.info("W&B %s run %s (%s) in project %s", mode, step, run.id, run.project)
    try:
        yield StepRun(run, offline=mode == "offline")
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
