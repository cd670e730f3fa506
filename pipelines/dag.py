"""The one wiring of the training DAG, shared by the local and the Vertex pipeline:

    prepare -> convert (records and each image's facts) -> validate (stops on leakage; --fix drops rows) -> train
        -> evaluate (candidate vs champion)
        -> check serving -> gate: `blessed` -> deploy
                            `-> export (TFLite / ONNX, only when export_formats is not empty)

What differs between the two is passed in as `Steps`: where each step runs (local components, or our images with
conversion on Dataflow and training as a Vertex custom job) and the runner options those need. Both pipelines
call `wire` inside their `@dsl.pipeline` function and open their deploy branch with `blessed(wired)`: publishing
a local version, or GCPC's upload and deploy ops. A step added here appears in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kfp import dsl

from components.train.config import parameters

GATE = "blessed"  # the deploy condition's name in the compiled DAG
EVALUATION_REFUSED = "evaluation-refused"  # inside the gate's else: evaluation, not serving, refused it
EXPORT = "export-formats"  # the export condition's


@dataclass(frozen=True)
class Steps:
    """How each step runs. The components are KFP components (or, for training, a custom-job wrapper of one);
    the *_options are extra arguments those steps take where they run (pipeline channels or constants)."""

    prepare: Any
    validate: Any
    convert: Any
    train: Any
    evaluate: Any
    wandb_settings: Any
    export: Any
    check_serving: Any  # in the serving image: it starts the real server on the candidate
    convert_options: dict = field(default_factory=dict)
    train_options: dict = field(default_factory=dict)
    convert_name: str = "convert to TFRecords"
    train_name: str = "train"


@dataclass(frozen=True)
class Wired:
    """The tasks `wire` created, for the caller's outputs and its deploy branch."""

    prepare: Any
    validate: Any
    convert: Any
    train: Any
    evaluate: Any
    wandb_settings: Any  # the W&B settings every step takes (the first step's output), for the deploy branch
    export: Any  # inside the `export` condition: runs only when export_formats is not empty
    check_serving: Any  # its output is the deploy gate: evaluation's blessing and serving's


def validation_arguments(arguments: dict) -> dict:
    """The validate step's arguments out of a pipeline function's arguments (validate_fix is the step's fix)."""
    return {"fix": arguments["validate_fix"], "max_leakage": arguments["max_leakage"],
            "near_duplicate_distance": arguments["near_duplicate_distance"]}


def training_arguments(arguments: dict) -> dict:
    """The training parameters (TrainConfig's, by name) out of a pipeline function's arguments."""
    return {name: arguments[name] for name in parameters()}


def wire(steps: Steps, *, images_root, record_format, training: dict, min_accuracy, champion_uri, max_regression,
         wandb: dict, validation: dict, export_formats, serving: dict, explain: dict | None = None) -> Wired:
    """Adds prepare -> convert -> validate -> train -> evaluate -> check serving (and export) to the pipeline being
    defined. `training` holds every TrainConfig parameter (see training_arguments); `champion_uri` is the served
    model evaluation compares the candidate with ("" for none); `wandb` the W&B settings component's arguments.
    Their `pipeline_run` (the W&B group when `group` is empty) defaults to the run's name; a pipeline whose steps
    are cached gives "" instead, since every step takes these settings and an input that differs per run is a
    cache miss. `validation` the validate step's gate arguments (fix, max_leakage, near_duplicate_distance);
    `export_formats` e.g. "onnx,tflite:int8" ("" exports nothing); `serving` the serving check's limits
    (max_p99_ms, min_throughput, max_memory_mb); `explain` the evaluate step's intended_use (the model card's) and
    saliency_images."""
    wandb_settings = steps.wandb_settings(
        **{"pipeline_run": dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **wandb}).set_display_name("W&B settings").output
    prepared = steps.prepare(images_root=images_root, wandb_settings=wandb_settings).set_display_name("prepare CSV")
    # Conversion writes each image's validation facts beside its records, so that validation reads no image again;
    # validation then gates training and hands on the records (less what --fix dropped).
    converted = steps.convert(
        image_csv=prepared.outputs["image_csv"], record_format=record_format, wandb_settings=wandb_settings,
        facts=True, **steps.convert_options,
    ).set_display_name(steps.convert_name)
    validated = steps.validate(
        image_csv=prepared.outputs["image_csv"], converted=converted.outputs["tfrecords"],
        image_size=training["image_size"], wandb_settings=wandb_settings, **validation,
    ).set_display_name("validate data")
    records = validated.outputs["tfrecords"]
    trained = steps.train(
        tfrecords=records, wandb_settings=wandb_settings, **training, **steps.train_options,
    ).set_display_name(steps.train_name)
    scored = steps.evaluate(
        model=trained.outputs["model"], tfrecords=records, min_accuracy=min_accuracy,
        champion_uri=champion_uri, max_regression=max_regression, wandb_settings=wandb_settings,
        validation=validated.outputs["validation"], **(explain or {}),
    ).set_display_name("evaluate vs champion")
    with dsl.If(export_formats != "", name=EXPORT):
        exported = steps.export(model=trained.outputs["model"], tfrecords=records,
                                export_formats=export_formats).set_display_name("export (TFLite / ONNX)")
    # After evaluation, and only when it blessed the candidate (else it answers False at once).
    checked = steps.check_serving(
        model=trained.outputs["model"], tfrecords=records,
        evaluation_blessed=scored.outputs["Output"], **serving,
    ).set_display_name("check serving")
    return Wired(prepared, validated, converted, trained, scored, wandb_settings, exported, checked)


def blessed(wired: Wired) -> dsl.If:
    """The deploy gate: the serving check's single output says evaluation blessed the candidate (it beats always
    answering the largest class, reaches min_accuracy and is not worse than the champion by more than
    max_regression) and so did serving (the real server answers as the SavedModel does, within the latency,
    throughput and memory limits). (A single-output component's Output: kfp.local 2.17 cannot resolve a dsl.If on
    a NamedTuple output.)"""
    return dsl.If(wired.check_serving.outputs["Output"] == True, name=GATE)  # noqa: E712 - a KFP condition


def refused_by_evaluation(wired: Wired) -> dsl.If:
    """Inside the gate's `dsl.Else`: evaluation refused the candidate (the serving check then did not run). Where
    it is false, the serving check refused a candidate evaluation blessed: it may not even load in the serving
    image, so nothing may publish it, not even as a challenger."""
    return dsl.If(wired.evaluate.outputs["Output"] == False, name=EVALUATION_REFUSED)  # noqa: E712
