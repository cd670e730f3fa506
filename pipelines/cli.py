"""The `catsdogs` command: each stage on its own, the whole local pipeline (`run`), and the Vertex compile."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys

from components import logs, storage, tracking
from components.errors import InputError
from components.serve.limits import GRACE_SECONDS

log = logging.getLogger("catsdogs")


def _classes(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(","))


def cmd_sample_data(args) -> None:
    from components.sample_data import generate_sample

    paths = generate_sample(args.out_dir, args.per_class, args.classes, args.layout, args.seed)
    print(f"wrote {len(paths)} images for {len(args.classes)} classes to {args.out_dir}")


def cmd_prepare(args) -> None:
    from components.prepare import prepare_csv

    counts = prepare_csv(args.images_root, args.output, args.train_fraction, args.validation_fraction)
    print(f"wrote {sum(counts.values())} rows to {args.output}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def cmd_convert(args, beam_args: list[str]) -> None:
    from components.convert.pipeline import convert
    from components.convert.pipeline import dataflow_args

    if args.runner == "DataflowRunner":
        labels = dict(label.split("=", 1) for label in args.label)
        beam_args = dataflow_args(
            args.project, args.region, args.temp_location, sdk_container_image=args.sdk_container_image,
            service_account=args.service_account, machine_type=args.machine_type, max_workers=args.max_workers,
            job_name=args.job_name, subnetwork=args.subnetwork, labels=labels,
        ) + beam_args
    summary = convert(args.csv, args.output_dir, args.format, args.compression, args.num_shards,
                      args.max_error_fraction, args.runner, beam_args, args.workers, args.dry_run)
    if args.dry_run:
        return
    print(f"{summary.good} of {summary.rows} rows written to {args.output_dir} as {summary.format} records "
          f"({', '.join(f'{k} {v}' for k, v in summary.per_split.items())}); {summary.bad} bad, "
          f"{summary.duplicates} duplicates, {summary.discarded} discarded; labels {summary.labels}")


def cmd_inspect(args) -> None:
    from components.convert.inspect import inspect_records

    print(inspect_records(args.data_dir, args.split, args.num_records, args.output_dir))


def cmd_train(args) -> int:
    from components.evaluate.core import evaluate
    from components.train.core import TrainConfig, train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
                         learning_rate=args.learning_rate, model=args.model, weights=args.weights,
                         augment=args.augment)
    result = train(args.data, args.model_dir, config)
    if result.export_dir != args.model_dir:
        return 0  # a non-chief worker of a multi-node run: the chief evaluates
    scored = evaluate(args.model_dir, args.data)
    deployable = scored.accuracy >= args.min_accuracy
    print(f"{scored.split} accuracy {scored.accuracy:.4f}, AUC {scored.auc:.4f} on {scored.examples} images; "
          f"SavedModel in {args.model_dir}; deployable (accuracy >= {args.min_accuracy}): {deployable}")
    return 0


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(0)


def cmd_serve(args) -> None:
    from components.serve.server import make_server

    server = make_server(args.model_base, args.host, args.port, model_name=args.model_name,
                         poll_seconds=args.poll_seconds, max_batch=args.max_batch, grace_seconds=args.grace_seconds)
    # As a container's PID 1 Python ignores SIGTERM unless it handles it; Vertex and podman stop with it.
    # While serving, uvicorn handles it (stop accepting, answer what is in flight) and then re-raises it here.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    name = server.model.name
    print(f"serving {name} version {server.model.version} at {server.url} (GET {server.health_route}, "
          f"POST {server.predict_route}, POST /v1/models/{name}:predict); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def cmd_predict(args) -> None:
    import json

    from components.serve.client import format_prediction, predict_files, prediction_request

    if args.image_size is not None and args.image_size < 1:
        raise InputError(f"--image-size must be at least 1, got {args.image_size}")
    if args.dry_run:
        print(json.dumps(prediction_request(args.images, args.endpoint, args.image_size), indent=1))
        return
    predictions = predict_files(args.images, args.endpoint, image_size=args.image_size)
    for path, prediction in zip(args.images, predictions):
        print(json.dumps({"image": path, **prediction}) if args.json else format_prediction(path, prediction))


def cmd_deploy(args) -> None:
    import json

    from components.deploy.vertex import VertexDeployment, deploy, dry_run
    from components.images import Images

    deployment = VertexDeployment(
        project=args.project, location=args.location, model_dir=args.model_dir,
        serving_image=Images.from_registry(args.images_registry, args.images_tag).serving,
        model_display_name=args.model_display_name, endpoint_display_name=args.endpoint_display_name,
        machine_type=args.machine_type, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        traffic_percent=args.traffic_percent, version_aliases=tuple(a for a in args.version_aliases.split(",") if a),
    )
    if args.dry_run:
        print(json.dumps(dry_run(deployment), indent=1))
        return
    model, endpoint = deploy(deployment)
    print(f"deployed {model} to {endpoint}; try: catsdogs predict IMAGE --endpoint {endpoint}")


def demo_images(rows: list, per_label: int = 2) -> list[str]:
    """A few held-out images per label (TEST first) to show the deployed model's predictions on."""
    rows = sorted(rows, key=lambda r: (r.split != "TEST", r.image_uri))
    picked: dict[str, list[str]] = {}
    for row in rows:
        if len(picked.setdefault(row.label, [])) < per_label:
            picked[row.label].append(row.image_uri)
    return [uri for uris in picked.values() for uri in uris]


def cmd_run(args) -> None:
    from components.prepare.core import scan_images
    from components.sample_data import generate_sample
    from components.serve.client import format_prediction, predict_files
    from components.serve.server import make_server, serve_in_background
    from pipelines.local import local_workdir, run_local

    local_workdir(args.workdir)  # before a sample is generated there
    images_root = args.images_root
    if images_root is None:
        images_root = os.path.join(args.workdir, "sample")
        shutil.rmtree(images_root, ignore_errors=True)
        generate_sample(images_root, per_class=args.per_class, classes=args.classes, seed=args.seed)
        print(f"generated {args.per_class} images per class {list(args.classes)} in {images_root}")
    rows = scan_images(images_root)  # fail here, clearly, before the pipeline starts

    result = run_local(
        images_root, args.workdir, model_name=args.model_name, model_base=args.model_base, epochs=args.epochs,
        batch_size=args.batch_size, image_size=args.image_size, learning_rate=args.learning_rate,
        min_accuracy=args.min_accuracy,
        wandb_project=args.wandb_project, wandb_mode=args.wandb_mode, wandb_group=args.wandb_group,
    )
    print(f"\nheld-out accuracy: {result.accuracy:.4f}")
    if result.version is None:
        print(f"not deployed: accuracy is below --min-accuracy {args.min_accuracy}")
        return
    print(f"deployed version {result.version} at {storage.join(result.model_base, str(result.version))}")
    server = make_server(result.model_base, "127.0.0.1", 0)
    serve_in_background(server)
    try:
        print(f"predictions from {server.url} (version {server.model.version}):")
        images = demo_images(rows)
        for path, prediction in zip(images, predict_files(images, server.url)):
            print("  " + format_prediction(path, prediction))
    finally:
        server.shutdown()
        server.server_close()


def cmd_compile(args) -> None:
    from components.images import Images
    from pipelines.vertex import compile_vertex_pipeline

    images = Images.from_registry(args.images_registry, args.images_tag)
    compile_vertex_pipeline(args.output, images, args.machine, args.replicas)
    print(f"compiled the Vertex pipeline ({args.replicas} x {args.machine} training, images {images.components}, "
          f"{images.trainer}, {images.serving}) to {args.output}")


def cmd_submit(args) -> None:
    import json
    import tempfile

    from google.auth.credentials import AnonymousCredentials

    from components.images import Images
    from pipelines.submit import build_job, job_request, submit
    from pipelines.vertex import compile_vertex_pipeline

    images = Images.from_registry(args.images_registry, args.images_tag)
    with tempfile.TemporaryDirectory(prefix="catsdogs-submit-") as folder:
        template = f"{folder}/pipeline.yaml"
        compile_vertex_pipeline(template, images, args.machine, args.replicas)
        labels = dict(label.split("=", 1) for label in args.label)
        job = build_job(template, args.project, args.region, args.pipeline_root, args.images, args.param,
                        enable_caching=not args.no_cache, labels=labels,
                        credentials=AnonymousCredentials() if args.dry_run else None)
        if args.dry_run:
            request = {**job_request(job), "serviceAccount": args.service_account,
                       "location": args.region, "project": args.project}
            print(json.dumps(request, indent=2))
            return
        name = submit(job, args.service_account, args.wait)
    print(f"submitted {name}")


def _add_vertex_build_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images-registry", default="",
                        help="e.g. us-central1-docker.pkg.dev/PROJECT/catsdogs (default: local image names)")
    parser.add_argument("--images-tag", default="latest", help="(default %(default)s)")
    parser.add_argument("--machine", default="T4_1X",
                        help="training machine preset: CPU, T4_1X, T4_4X, V100_4X, A100_8X, L4_1X ... (default %(default)s)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="training machines; more than 1 trains multi-node (default %(default)s)")


def _add_training_flags(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument("--epochs", type=int, default=epochs, help="passes over the training split (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per step on each GPU or worker (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=150, help="images are resized to SxS pixels (default %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=0.001, help="Adam learning rate (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catsdogs",
        description="Labelled images -> CSV -> TFRecords -> Keras classifier -> served model, locally or on Vertex AI.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample-data", help="generate a labelled JPEG image set to try things with")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--per-class", type=int, default=200, help="images per class (default %(default)s)")
    p.add_argument("--layout", choices=("flat", "split"), default="flat",
                   help="flat: OUT_DIR/<label>/*.jpg; split: OUT_DIR/train|validation/<label>/*.jpg")
    p.add_argument("--classes", type=_classes, default=("cats", "dogs"), help="comma-separated (default cats,dogs)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same files (default %(default)s)")
    p.set_defaults(handler=cmd_sample_data)

    p = sub.add_parser("prepare", help="scan <label>/<file> or <split>/<label>/<file> into a split,image_uri,label CSV")
    p.add_argument("images_root", metavar="IMAGES_ROOT", help="local folder or gs://bucket/prefix")
    p.add_argument("--output", required=True, metavar="CSV", help="where to write the CSV (local or gs://)")
    p.add_argument("--train-fraction", type=float, default=0.8, help="without split folders (default %(default)s)")
    p.add_argument("--validation-fraction", type=float, default=0.1, help="the rest is TEST (default %(default)s)")
    p.set_defaults(handler=cmd_prepare)

    p = sub.add_parser("convert", help="convert the CSV's images to TFRecords with Apache Beam",
                       description="Reads the CSV (split,image_uri,label), checks every image and writes "
                                   "<split>-SSSSS-of-NNNNN.tfrecord[.gz], labels.json, summary.json and "
                                   "errors-*.csv (bad rows with the reason). Arguments after -- go to Beam.")
    p.add_argument("csv", metavar="CSV")
    p.add_argument("--output-dir", required=True, help="folder for the shards, labels.json, summary.json, errors")
    p.add_argument("--format", choices=("jpeg", "tfrecorder"), default="jpeg",
                   help="jpeg: JPEG bytes (default); tfrecorder: TFRecorder's base64 raw pixels")
    p.add_argument("--compression", choices=("gzip", "none"), default=None,
                   help="default: none for jpeg (JPEGs do not compress), gzip for tfrecorder")
    p.add_argument("--num-shards", type=int, default=0, help="shards per split; 0: one per 1000 records")
    p.add_argument("--max-error-fraction", type=float, default=0.05,
                   help="fail when more rows than this are bad (default %(default)s)")
    p.add_argument("--runner", choices=("DirectRunner", "DataflowRunner"), default="DirectRunner",
                   help="(default %(default)s)")
    p.add_argument("--workers", type=int, default=0,
                   help="DirectRunner processes; 0: one below 5000 rows, else one per core")
    p.add_argument("--dry-run", action="store_true", help="print the pipeline options and steps, run nothing")
    dataflow = p.add_argument_group("Dataflow (with --runner DataflowRunner)")
    dataflow.add_argument("--project", default="")
    dataflow.add_argument("--region", default="")
    dataflow.add_argument("--temp-location", default="", help="gs:// folder for Dataflow's staging")
    dataflow.add_argument("--sdk-container-image", default="", help="worker image (the catsdogs components image)")
    dataflow.add_argument("--service-account", default="", help="worker service account email")
    dataflow.add_argument("--machine-type", default="", help="worker machine type, e.g. n1-standard-4")
    dataflow.add_argument("--max-workers", type=int, default=0, help="autoscaling limit")
    dataflow.add_argument("--job-name", default="")
    dataflow.add_argument("--subnetwork", default="", help="workers' subnetwork (regions/R/subnetworks/S or a URL)")
    dataflow.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="job label (repeatable)")
    p.set_defaults(handler=cmd_convert, takes_beam_args=True)

    p = sub.add_parser("inspect", help="show what a folder of TFRecords holds, and write a few images")
    p.add_argument("data_dir", metavar="DIR", help="output folder of `catsdogs convert`")
    p.add_argument("--split", default="train", help="train, validation or test (default %(default)s)")
    p.add_argument("--num-records", type=int, default=3, help="records to show (default %(default)s)")
    p.add_argument("--output-dir", default=None, metavar="PNG_DIR", help="write those records' images here")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("train", help="train the classifier from TFRecords and export a SavedModel",
                       description="Trains on TRAIN (validating on VALIDATION), exports a SavedModel and scores "
                                   "it on TEST. Uses every GPU it finds (MirroredStrategy) and joins a multi-node "
                                   "run when TF_CONFIG or Vertex's CLUSTER_SPEC names several tasks. Re-running "
                                   "an interrupted command resumes from its last finished epoch.")
    p.add_argument("--data", required=True, metavar="TFRECORD_DIR", help="output folder of `catsdogs convert`")
    p.add_argument("--model-dir", required=True, help="where the SavedModel goes (local or gs://)")
    p.add_argument("--model", default="seed_cnn", choices=("seed_cnn", "mobilenet_v3_small"),
                   help="architecture (default %(default)s)")
    p.add_argument("--weights", default="", help="local weights file for the model (nothing is downloaded)")
    p.add_argument("--augment", action="store_true", help="random flips and crops while training")
    p.add_argument("--min-accuracy", type=float, default=0.0, help="accuracy that makes the model deployable")
    _add_training_flags(p, epochs=5)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("serve", help="serve the newest model version over HTTP")
    p.add_argument("model_base", metavar="MODEL_BASE", nargs="?",
                   help="SavedModel folder or base of numbered versions (default: $AIP_STORAGE_URI)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=None, help="port (default $AIP_HTTP_PORT or 8080)")
    p.add_argument("--model-name", help="NAME in /v1/models/NAME (default: MODEL_BASE's folder name)")
    p.add_argument("--poll-seconds", type=float, default=5.0,
                   help="how often to look for new versions; 0: never (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="most images in one model call when requests are batched (default %(default)s)")
    p.add_argument("--grace-seconds", type=float, default=GRACE_SECONDS,
                   help="on SIGTERM, how long requests in flight may take to finish (default %(default)s)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("predict", help="send images to a prediction server and print the labels")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--endpoint", required=True,
                   help="server URL, e.g. http://127.0.0.1:8080, or a Vertex AI endpoint projects/P/locations/L/endpoints/E")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="the model's input size: when a request would be over the endpoint's size limit (Vertex "
                        "AI: 1.5 MB), images are downsized to this (default: at most 1024 pixels a side)")
    p.add_argument("--dry-run", action="store_true", help="print the request instead of sending it")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("deploy", help="upload a SavedModel to Vertex AI as a model version and deploy it to an endpoint",
                       description="A new version of the model named --model-display-name (if it exists), deployed "
                                   "to the endpoint named --endpoint-display-name (reused, or created).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="gs:// folder holding the SavedModel")
    p.add_argument("--project", required=True)
    p.add_argument("--location", required=True, help="e.g. us-central1")
    p.add_argument("--images-registry", required=True, help="where the serving image is, e.g. "
                   "us-central1-docker.pkg.dev/PROJECT/catsdogs")
    p.add_argument("--images-tag", default="latest", help="(default %(default)s)")
    p.add_argument("--model-display-name", default="catsdogs", help="(default %(default)s)")
    p.add_argument("--endpoint-display-name", default="catsdogs", help="(default %(default)s)")
    p.add_argument("--version-aliases", default="", help="comma-separated aliases for the new version, e.g. v2,candidate")
    p.add_argument("--machine-type", default="n1-standard-2", help="(default %(default)s)")
    p.add_argument("--min-replicas", type=int, default=1, help="autoscaling lower bound (default %(default)s)")
    p.add_argument("--max-replicas", type=int, default=1, help="autoscaling upper bound (default %(default)s)")
    p.add_argument("--traffic-percent", type=int, default=100,
                   help="share of the endpoint's traffic for the new version (default %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the requests instead of sending them")
    p.set_defaults(handler=cmd_deploy)

    p = sub.add_parser("run", help="the whole pipeline locally through kfp.local, ending in predictions",
                       description="prepare -> convert -> train -> evaluate -> deploy a new model version, then "
                                   "serve it and predict a few images. Without IMAGES_ROOT a sample is generated.")
    p.add_argument("images_root", metavar="IMAGES_ROOT", nargs="?", help="labelled images (default: generate a sample)")
    p.add_argument("--workdir", required=True,
                   help="local folder for the pipeline outputs (and models/<name>/<version> without --model-base)")
    p.add_argument("--per-class", type=int, default=200, help="sample images per class (default %(default)s)")
    p.add_argument("--classes", type=_classes, default=("cats", "dogs"), help="sample classes (default cats,dogs)")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default %(default)s)")
    p.add_argument("--model-name", default="catsdogs", help="deployed model name (default %(default)s)")
    p.add_argument("--model-base", default=None,
                   help="where model versions are published, local or gs:// (default WORKDIR/models/MODEL_NAME)")
    p.add_argument("--min-accuracy", type=float, default=0.0,
                   help="deploy only when held-out accuracy reaches this (default %(default)s)")
    _add_training_flags(p, epochs=5)
    wandb = p.add_argument_group("Weights & Biases (one run per step; W&B files go under WORKDIR/wandb)")
    wandb.add_argument("--wandb-project", default=tracking.PROJECT, help="(default %(default)s)")
    wandb.add_argument("--wandb-mode", choices=tracking.MODES,
                       help="default: online when WANDB_API_KEY is set, else offline (upload later: wandb sync)")
    wandb.add_argument("--wandb-group", default="", help="group of the step runs (default: the pipeline run's name)")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("compile", help="compile the Vertex AI pipeline to YAML")
    p.add_argument("--output", default="pipeline.yaml", help="(default %(default)s)")
    _add_vertex_build_flags(p)
    p.set_defaults(handler=cmd_compile)

    p = sub.add_parser("submit", help="compile and submit the pipeline to Vertex AI Pipelines",
                       description="Compiles the Vertex pipeline and submits it as a PipelineJob. Pipeline "
                                   "parameters (see `catsdogs compile` output's root inputs) are set with "
                                   "--param KEY=VALUE. --dry-run prints the request and needs no credentials.")
    p.add_argument("--project", required=True)
    p.add_argument("--region", required=True, help="e.g. europe-west4")
    p.add_argument("--pipeline-root", required=True, help="gs:// folder for the pipeline's artifacts")
    p.add_argument("--images", required=True, help="gs:// folder of labelled images (<label>/<file>)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter (repeatable)")
    p.add_argument("--service-account", default="", help="service account the pipeline runs as")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="job label (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")
    p.add_argument("--wait", action="store_true", help="wait for the run to finish")
    p.add_argument("--dry-run", action="store_true", help="print the job request, submit nothing")
    _add_vertex_build_flags(p)
    p.set_defaults(handler=cmd_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    beam_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, beam_args = argv[:split], argv[split + 1:]
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines drown the progress output
    logs.setup(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if getattr(args, "takes_beam_args", False):
            args.handler(args, beam_args)
        else:
            if beam_args:
                raise InputError(f"arguments after -- are only for `catsdogs convert`: {' '.join(beam_args)}")
            args.handler(args)
    except InputError as e:
        print(f"catsdogs {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
