"""The local DAG: prepare -> convert -> train -> evaluate -> deploy (a new numbered model version), run by
kfp.local's SubprocessRunner in this Python environment, with the same components the Vertex DAG uses."""


import contextlib
import os
import warnings
from dataclasses import dataclass

from kfp import dsl, local
from kfp.dsl import Metrics

from components import storage, tracking
from components.contracts import DEFAULT_RECORD_FORMAT
from components.convert.component import convert
from components.deploy.component import deploy_local
from components.deploy.core import versions
from components.errors import InputError
from components.evaluate.component import evaluate
from components.prepare.component import prepare
from components.train.component import train
from components.train.config import TrainConfig
from pipelines.dag import Steps, Wired, training_arguments, wire


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
    record_format: str = DEFAULT_RECORD_FORMAT,
    min_accuracy: float = 0.0,
    wandb_project: str = tracking.PROJECT,
    wandb_mode: str = "disabled",
    wandb_group: str = "",
) -> Metrics:
    """The shared DAG (pipelines/dag.py) with every step in this environment; passing evaluation publishes the
    model as the next numbered version under model_base."""
    wandb_settings = tracking.pipeline_settings(wandb_project, wandb_mode, wandb_group)

    def publish(wired: Wired) -> None:
        deploy_local(model=wired.train.outputs["model"], model_base=model_base,
                     wandb_settings=wandb_settings).set_display_name("publish version")

    wired = wire(
        Steps(prepare=prepare, convert=convert, train=train, evaluate=evaluate),
        images_root=images_root, record_format=record_format, training=training_arguments(locals()),
        min_accuracy=min_accuracy, wandb_settings=wandb_settings, deploy=publish,
    )
    return wired.evaluate.outputs["metrics"]


@dataclass(frozen=True)
class LocalRun:
    accuracy: float
    version: int | None  # None when the model did not pass the deploy gate
    model_base: str


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
              wandb_mode: str | None = None, **parameters) -> LocalRun:
    """Runs the local DAG with pipeline outputs under workdir/pipeline_root, the model versions under
    model_base (default workdir/models/<model_name>) and W&B's files under workdir/wandb. images_root and
    model_base may be gs:// URIs; workdir must be local: kfp.local writes its task outputs there with plain
    file I/O. wandb_mode defaults to online with WANDB_API_KEY set, else offline."""
    wandb_mode = wandb_mode or tracking.default_mode()
    tracking.check_mode(wandb_mode)
    if wandb_mode == "online":
        tracking.check_online(tracking.api_key())  # in seconds, before any step runs
    workdir = local_workdir(workdir)
    model_base = _absolute(model_base or os.path.join(workdir, "models", model_name))
    # Our components name their container images; here they run in this environment on purpose.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.join(workdir, "pipeline_root"))
    before = versions(model_base)
    with _environment(tracking.local_dirs(workdir)):
        task = local_pipeline(images_root=_absolute(images_root), model_base=model_base,
                              wandb_mode=wandb_mode, **parameters)
    after = versions(model_base)
    return LocalRun(task.output.metadata["accuracy"], after[-1] if after != before else None, model_base)


def local_workdir(workdir: str) -> str:
    """The workdir, absolute; a gs:// one is refused: kfp.local writes its task outputs with plain file I/O."""
    if storage.is_gcs(workdir):
        raise InputError(f"the workdir must be a local folder (kfp.local keeps its pipeline root there), got "
                         f"{workdir}; the images root and --model-base can be gs://")
    return os.path.abspath(workdir)


def _absolute(path: str) -> str:
    """Local paths made absolute, as the components run in other processes; gs:// URIs as they are."""
    return path if storage.is_gcs(path) else os.path.abspath(path)
