"""The local DAG: prepare -> convert -> validate -> train -> evaluate -> deploy (a new numbered model version), run by
kfp.local's SubprocessRunner in this Python environment, with the same components the Vertex DAG uses."""


import contextlib
import os
import shutil
import warnings
from dataclasses import dataclass, field

from kfp import dsl, local
from kfp.dsl import Metrics

from components import storage, tracking
from components.contracts import DEFAULT_RECORD_FORMAT
from components.convert.component import convert
from components.deploy.component import deploy_local
from components.errors import InputError
from components.evaluate.component import evaluate
from components.evaluate.config import GATE
from components.evaluate.label_issues import ISSUES_FILE
from components.evaluate.model_card import CARD_FILE
from components.evaluate.saliency import SALIENCY_IMAGES
from components.export.component import export
from components.model_store import versions
from components.prepare.component import prepare
from components.serve_check.component import check_serving
from components.tracking_component import wandb_settings
from components.train.component import train
from components.train.config import TrainConfig
from components.validate.component import validate
from components.validate.config import VALIDATE
from pipelines import progress
from pipelines.dag import Steps, blessed, training_arguments, validation_arguments, wire

TRAINING = TrainConfig()  # the training parameters' defaults, written once in TrainConfig


@dsl.pipeline(name="catsdogs-local", description="Labelled images to a served image classifier, on this machine.")
def local_pipeline(
    images_root: str,
    model_base: str,
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
    wandb_project: str = tracking.PROJECT,
    wandb_mode: str = "disabled",
    wandb_group: str = "",
    export_formats: str = "",
    max_p99_ms: float = 0.0,
    min_throughput: float = 0.0,
    max_memory_mb: float = 0.0,
    intended_use: str = "",  # the model card's (empty: model_card.DEFAULT_INTENDED_USE)
    saliency_images: int = SALIENCY_IMAGES,  # report images with a saliency overlay
) -> Metrics:
    """The shared DAG (pipelines/dag.py) with every step in this environment. The champion is the newest version
    under model_base; a blessed candidate is published as the next numbered version there."""
    wired = wire(
        Steps(prepare=prepare, validate=validate, convert=convert, train=train, evaluate=evaluate,
              wandb_settings=wandb_settings, export=export, check_serving=check_serving),
        images_root=images_root, record_format=record_format, training=training_arguments(locals()),
        validation=validation_arguments(locals()),
        min_accuracy=min_accuracy, champion_uri=model_base, max_regression=max_regression,
        wandb=dict(project=wandb_project, mode=wandb_mode, group=wandb_group, secret="", gcp_project=""),
        export_formats=export_formats,
        serving=dict(max_p99_ms=max_p99_ms, min_throughput=min_throughput, max_memory_mb=max_memory_mb),
        explain=dict(intended_use=intended_use, saliency_images=saliency_images),
    )
    with blessed(wired):
        deploy_local(model=wired.train.outputs["model"], model_base=model_base,
                     wandb_settings=wired.wandb_settings).set_display_name("publish version")
    return wired.evaluate.outputs["metrics"]


@dataclass(frozen=True)
class LocalRun:
    accuracy: float
    version: int | None  # None when the model did not pass the deploy gate
    model_base: str
    metrics: dict = field(default_factory=dict)  # the pipeline's output Metrics: accuracy, auc, examples, split...
    run_name: str = ""  # the kfp.local run: workdir/pipeline_root/<run_name>
    reports: tuple[str, ...] = ()  # HTML reports, copied to workdir/reports/<run_name>/
    logs_dir: str = ""  # workdir/logs: <step>.log per step, and progress.RUN_LOG
    steps: tuple[progress.Step, ...] = ()  # in the order they ran
    wandb_runs: tuple[str, ...] = ()  # offline run folders or online run URLs
    serving_check: str = ""  # the serving check's one-line summary, "blessed: ..." or "refused: ..." ("" if none)
    exports: str = ""  # with export_formats: the TFLite / ONNX files and export.json (beside the version, if any)


class PipelineFailed(Exception):
    """A step failed; its log's last lines have been shown."""

    def __init__(self, step: progress.Step):
        super().__init__(f"step {step.name} failed; its log: {step.log_path}")
        self.step = step


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    """os.environ with these variables while the block runs (the steps' subprocesses inherit it)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_local(images_root: str, workdir: str, model_name: str = "catsdogs", model_base: str | None = None,
              wandb_mode: str | None = None, console: progress.Console | None = None, **parameters) -> LocalRun:
    """Runs the local DAG with pipeline outputs under workdir/pipeline_root, the model versions under
    model_base (default workdir/models/<model_name>) and W&B's files under workdir/wandb. images_root and
    model_base may be gs:// URIs; workdir must be local: kfp.local writes its task outputs there with plain
    file I/O. wandb_mode defaults to online with WANDB_API_KEY set, else offline.

    Each step's output goes to workdir/logs/<step>.log, and the console (default: this process's stdout) gets
    one line per step; the HTML reports are copied to workdir/reports/<run>/. Raises PipelineFailed when a step
    fails, after showing the end of its log."""
    wandb_mode = wandb_mode or tracking.default_mode()
    tracking.check_mode(wandb_mode)
    if wandb_mode == "online":
        tracking.check_online(tracking.api_key())  # in seconds, before any step runs
    workdir = local_workdir(workdir)
    model_base = _absolute(model_base or os.path.join(workdir, "models", model_name))
    # Our components name their container images; here they run in this environment on purpose.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.join(workdir, "pipeline_root"))
    logs_dir = os.path.join(workdir, "logs")
    progress.clear_logs(logs_dir, keep=(progress.RUN_LOG,))
    steps = progress.StepLogs(logs_dir, console or progress.Console())
    before = versions(model_base)
    with _environment({**tracking.local_dirs(workdir), **QUIET_ENVIRONMENT}), steps.capture():
        try:
            task = local_pipeline(images_root=_absolute(images_root), model_base=model_base,
                                  wandb_mode=wandb_mode, **parameters)
        except RuntimeError:  # kfp.local: "Pipeline ... finished with status FAILURE"
            if steps.failed() is None:
                raise
            raise PipelineFailed(steps.failed()) from None
    after = versions(model_base)
    ran = tuple(steps.steps.values())
    run_dir = next((s.run_dir for s in ran if s.run_dir), "")
    run_name = os.path.basename(run_dir)
    version = after[-1] if after != before else None
    return LocalRun(task.output.metadata["accuracy"], version, model_base,
                    metrics=dict(task.output.metadata), run_name=run_name,
                    reports=_copy_reports(ran, os.path.join(workdir, "reports", run_name or "latest")),
                    logs_dir=logs_dir, steps=ran, wandb_runs=tuple(steps.wandb_runs()),
                    serving_check=next((s.artifact("serving_check").get("metadata", {}).get("summary", "")
                                        for s in ran if s.artifact("serving_check")), ""),
                    exports=_place_exports(ran, model_base, version))


def _place_exports(steps: tuple[progress.Step, ...], model_base: str, version: int | None) -> str:
    """The export step's files: copied beside the published version (<version>/export, as `catsdogs export`
    writes them), else left in the pipeline root. "" when nothing was exported."""
    from components.export.core import default_output_dir

    uri = next((s.artifact("exports").get("uri", "") for s in steps if s.name.startswith("export")), "")
    if not uri or not os.path.isdir(uri) or version is None:
        return uri if uri and os.path.isdir(uri) else ""
    target = default_output_dir(storage.join(model_base, str(version)))
    storage.copy_tree(uri, target)
    return target


# The steps' own environment: TensorFlow's C++ logging at errors only (its info lines still go to the step logs,
# never to the console) and no Python buffering, so a step's log is complete up to the moment it fails.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def _copy_reports(steps: tuple[progress.Step, ...], folder: str) -> tuple[str, ...]:
    """Copies each step's `report` (HTML) output to folder: report.html for evaluate (with its label_issues.csv
    and model_card.md), <step>-report.html else; and the validate step's validation.html."""
    copied, validation = [], []
    for step in steps:
        validated = step.artifact("validation").get("uri", "")  # the validate step's folder
        if validated and os.path.isfile(os.path.join(validated, "validation.html")):
            os.makedirs(folder, exist_ok=True)
            validation.append(shutil.copy(os.path.join(validated, "validation.html"), folder))
        uri = step.artifact("report").get("uri", "")
        if uri and os.path.isfile(uri):
            os.makedirs(folder, exist_ok=True)
            target = os.path.join(folder, "report.html" if step.name == "evaluate" else f"{step.name}-report.html")
            shutil.copyfile(uri, target)
            copied.append(target)
            if step.name == "evaluate":  # its label issues and model card, written beside the report
                for name in (ISSUES_FILE, CARD_FILE):
                    if os.path.isfile(os.path.join(os.path.dirname(uri), name)):
                        shutil.copyfile(os.path.join(os.path.dirname(uri), name), os.path.join(folder, name))
    return tuple(copied + validation)  # the evaluation report first: the one the command's output leads with


def local_workdir(workdir: str) -> str:
    """The workdir, absolute; a gs:// one is refused: kfp.local writes its task outputs with plain file I/O."""
    if storage.is_gcs(workdir):
        raise InputError(f"the workdir must be a local folder (kfp.local keeps its pipeline root there), got "
                         f"{workdir}; the images root and --model-base can be gs://")
    return os.path.abspath(workdir)


def _absolute(path: str) -> str:
    """Local paths made absolute, as the components run in other processes; gs:// URIs as they are."""
    return path if storage.is_gcs(path) else os.path.abspath(path)
