"""Model commands: train, export, batch-predict (each one's flags beside its handler)."""

from __future__ import annotations

import dataclasses

from components import storage
from components.batch_predict.config import BatchConfig
from components.beam_config import RUNNERS
from components.evaluate.config import GateConfig
from pipelines.cli.flags import (
    add_config_flags,
    add_dataflow_flags,
    add_max_file_bytes,
    add_training_flags,
    dataflow_beam_args,
    training_config,
)


def register(sub) -> None:
    add_train(sub)
    add_export(sub)
    add_batch_predict(sub)


def cmd_train(args) -> int:
    from components.evaluate.champion import decide, majority
    from components.evaluate.core import evaluate
    from components.train.core import train

    config = dataclasses.replace(training_config(args), cache=args.cache)
    result = train(args.data, args.model_dir, config)
    if result.export_dir != args.model_dir:  # a non-chief worker of a multi-node run: the chief evaluates
        print(f"trained as a worker of a multi-node run (weights sha256 {result.weights_sha256}); the chief "
              f"writes the model")
        return 0
    scored = evaluate(args.model_dir, args.data)
    decision = decide(scored.accuracy, None, args.min_accuracy, majority=majority(scored.class_names,
                                                                                 scored.confusion_matrix))
    print(f"{scored.split} accuracy {scored.accuracy:.4f}, AUC {scored.auc:.4f} on {scored.examples} images; "
          f"SavedModel in {args.model_dir}")
    print(f"{'deployable' if decision.publish else 'not deployable'}: {decision.reason}")
    before = f"{scored.uncalibrated['ece']:.4f} -> " if scored.uncalibrated else ""
    point = scored.operating_point
    print(f"calibration: temperature {scored.temperature:.4f}, {scored.split} ECE {before}"
          f"{scored.calibration['ece']:.4f}" + (f"; threshold {point['threshold'] or 0.5:.4f}: {scored.split} "
                                                 f"precision {point['precision']:.4f}, recall {point['recall']:.4f} "
                                                 f"of {point['positive']}" if point else ""))
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train the classifier from TFRecords and export a SavedModel",
                       description="Trains on TRAIN (validating on VALIDATION), exports a SavedModel and scores "
                                   "it on TEST. Uses every GPU it finds (MirroredStrategy) and joins a multi-node "
                                   "run when TF_CONFIG or Vertex's CLUSTER_SPEC names several tasks. Re-running "
                                   "an interrupted command resumes from its last finished epoch.")
    p.add_argument("--data", required=True, metavar="TFRECORD_DIR", help="output folder of `catsdogs convert`")
    p.add_argument("--model-dir", required=True, help="where the SavedModel goes (local or gs://)")
    add_config_flags(p, GateConfig, "min_accuracy")
    p.add_argument("--cache", default="auto", metavar="auto|memory|none|DIR",
                   help="decoded images: auto keeps them in memory when they fit 1 GiB, else re-reads them each "
                        "epoch; DIR caches on disk (default %(default)s)")
    add_training_flags(p)
    p.set_defaults(handler=cmd_train)


def cmd_export(args) -> None:
    from components.export.core import MANIFEST, check, default_output_dir, export_model, table, training_data

    check(args.format, args.quantize)
    output_dir = args.output_dir or default_output_dir(args.model_dir)
    data = args.data or training_data(args.model_dir)
    parity = export_model(args.model_dir, data, args.format, args.quantize, output_dir)
    print(table([parity]))
    print(f"wrote {storage.join(output_dir, parity.file)} (its input, classes and these numbers: {MANIFEST} there)")


def add_export(sub) -> None:
    from components.export import core as export

    p = sub.add_parser("export", help="export a SavedModel to TFLite or ONNX, checked against it on TEST",
                       description="Converts the SavedModel's pixel signature (float32 RGB 0..255 at the model's "
                                   "size, rescaled inside) to a .tflite or .onnx file, runs both on the TEST split "
                                   "(VALIDATION without one) and prints top-1 agreement, accuracies, the largest "
                                   "probability difference, sizes and one-image CPU latencies. An export under its "
                                   "agreement bar (99.5%%; int8: 98%%) is refused and nothing is written.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a SavedModel from `catsdogs train` (e.g. a version folder)")
    p.add_argument("--format", required=True, choices=export.FORMATS)
    p.add_argument("--quantize", choices=export.QUANTIZATIONS, default="none",
                   help="tflite only: fp16 weights, or int8 weights and activations calibrated on TRAIN images "
                        "(default %(default)s)")
    p.add_argument("--data", default=None, metavar="TFRECORD_DIR",
                   help="output folder of `catsdogs convert`: TEST to measure on, TRAIN to calibrate int8 "
                        "(default: the data the model was trained on, from its training.json)")
    p.add_argument("--output-dir", default=None,
                   help=f"where the file and {export.MANIFEST} go (default MODEL_DIR/{export.DEFAULT_SUBDIR})")
    p.set_defaults(handler=cmd_export)


def cmd_batch_predict(args, beam_args: list[str]) -> None:
    from components.batch_predict.core import batch_predict

    if args.runner == "DataflowRunner":
        beam_args = dataflow_beam_args(args) + beam_args
    summary = batch_predict(args.source, args.model, args.output_dir, args.batch_size, args.runner, beam_args,
                            args.dry_run, args.max_file_bytes)
    if args.dry_run:
        return
    print(f"{summary.predictions} predictions and {summary.errors} errors from {summary.model} version "
          f"{summary.version} in {summary.output_dir} (predictions-*.jsonl, errors-*.csv)")


def add_batch_predict(sub) -> None:
    p = sub.add_parser("batch-predict", help="score a folder or CSV of images with a model, with Apache Beam",
                       description="Scores every image of SOURCE with the newest version of MODEL (RunInference, "
                                   "batched) and writes predictions-SSSSS-of-NNNNN.jsonl (image_uri, label, "
                                   "probabilities, model, version) and errors-SSSSS-of-NNNNN.csv (image_uri,reason) "
                                   "for files that are missing, unreadable or not images. Arguments after -- go "
                                   "to Beam.")
    p.add_argument("source", metavar="SOURCE",
                   help="folder of images (<label>/<file>, <split>/<label>/<file> or flat; local or gs://) or a "
                        "CSV with an image_uri column")
    p.add_argument("--model", required=True, help="model base (its newest numbered version) or a SavedModel folder")
    p.add_argument("--output-dir", required=True, help="folder for the predictions and errors (local or gs://)")
    add_config_flags(p, BatchConfig)
    add_max_file_bytes(p)
    p.add_argument("--runner", choices=RUNNERS, default="DirectRunner", help="(default %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the pipeline options, steps and job graph size, run nothing")
    add_dataflow_flags(p)
    p.set_defaults(handler=cmd_batch_predict, takes_beam_args=True)
