"""The `catsdogs` command: each stage on its own, the whole local pipeline (`run`), and the Vertex compile."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import sys

from components import logs, storage, tracking
from components.contracts import DEFAULT_RECORD_FORMAT, RECORD_FORMATS
from components.errors import InputError
from components.evaluate.champion import MIN_ACCURACY
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

    # it logs the counts (once: the quiet console shows them)
    prepare_csv(args.images_root, args.output, args.train_fraction, args.validation_fraction, args.split_by)


def cmd_validate(args) -> None:
    from components.validate import check_gate, summary_line, validate

    report = validate(args.csv, args.output_dir, fix=args.fix, max_leakage=args.max_leakage,
                      max_conflicting=args.max_conflicting, near_duplicate_distance=args.near_duplicate_distance,
                      max_imbalance=args.max_imbalance, image_size=args.image_size)
    print(f"validated {args.csv}: {summary_line(report)}; report in {args.output_dir}")
    check_gate(report, args.output_dir)


def key_values(pairs: list[str], flag: str) -> dict[str, str]:
    """KEY=VALUE flags as a dict; one error line naming the flag for a pair without '='."""
    for pair in pairs:
        if "=" not in pair or pair.startswith("="):
            raise InputError(f"{flag} {pair!r}: expected KEY=VALUE")
    return dict(pair.split("=", 1) for pair in pairs)


def cmd_convert(args, beam_args: list[str]) -> None:
    from components.convert.pipeline import convert

    if args.runner == "DataflowRunner":
        beam_args = _dataflow_beam_args(args) + beam_args
    summary = convert(args.csv, args.output_dir, args.format, args.compression, args.num_shards,
                      args.max_error_fraction, args.runner, beam_args, args.workers, args.dry_run,
                      args.max_file_bytes)
    if args.dry_run:
        return
    print(f"{summary.good} of {summary.rows} rows written to {args.output_dir} as {summary.format} records "
          f"({', '.join(f'{k} {v}' for k, v in summary.per_split.items())}); {summary.bad} bad, "
          f"{summary.duplicates} duplicates, {summary.discarded} discarded; labels {summary.labels}")


def _dataflow_beam_args(args) -> list[str]:
    """Dataflow's Beam options from the flags of _add_dataflow_flags (the same ones convert takes)."""
    from components.beam_runner import dataflow_args

    return dataflow_args(
        args.project, args.region, args.temp_location, sdk_container_image=args.sdk_container_image,
        service_account=args.service_account, machine_type=args.machine_type, max_workers=args.max_workers,
        job_name=args.job_name, subnetwork=args.subnetwork, labels=key_values(args.label, "--label"),
    )


def cmd_batch_predict(args, beam_args: list[str]) -> None:
    from components.batch_predict.core import batch_predict

    if args.runner == "DataflowRunner":
        beam_args = _dataflow_beam_args(args) + beam_args
    summary = batch_predict(args.source, args.model, args.output_dir, args.batch_size, args.runner, beam_args,
                            args.dry_run, args.max_file_bytes)
    if args.dry_run:
        return
    print(f"{summary.predictions} predictions and {summary.errors} errors from {summary.model} version "
          f"{summary.version} in {summary.output_dir} (predictions-*.jsonl, errors-*.csv)")


def cmd_inspect(args) -> None:
    from components.convert.inspect import inspect_records

    print(inspect_records(args.data_dir, args.split, args.num_records, args.output_dir))


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


def cmd_export(args) -> None:
    from components.export.core import MANIFEST, check, default_output_dir, export_model, table, training_data

    check(args.format, args.quantize)
    output_dir = args.output_dir or default_output_dir(args.model_dir)
    data = args.data or training_data(args.model_dir)
    parity = export_model(args.model_dir, data, args.format, args.quantize, output_dir)
    print(table([parity]))
    print(f"wrote {storage.join(output_dir, parity.file)} (its input, classes and these numbers: {MANIFEST} there)")


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


def cmd_check_serving(args) -> None:
    from components.serve_check.core import CHECK_FILE, Limits, check_serving, default_images

    limits = Limits(max_p99_ms=args.max_p99_ms, min_throughput=args.min_throughput,
                    max_memory_mb=args.max_memory_mb, concurrency=args.concurrency, seconds=args.seconds,
                    sample=args.sample)
    result = check_serving(args.model_dir, args.images or default_images(args.model_dir), limits)
    output = args.output or storage.join(args.model_dir, CHECK_FILE)
    storage.write_text(output, result.to_json())
    if not result.blessed:
        raise InputError(f"{args.model_dir}: {result.summary()}; details in {output}")
    print(f"{result.summary()}; details in {output}")


def cmd_predict(args) -> None:
    import json

    from components.serve.client import format_prediction, predict_files, prediction_request

    if args.image_size is not None and args.image_size < 1:
        raise InputError(f"--image-size must be at least 1, got {args.image_size}")
    if args.dry_run:
        request = prediction_request(args.images, args.endpoint, args.image_size)
        print(json.dumps(request if args.json else _shortened(request), indent=1))
        return
    predictions = predict_files(args.images, args.endpoint, image_size=args.image_size)
    for path, prediction in zip(args.images, predictions):
        print(json.dumps({"image": path, **prediction}) if args.json else format_prediction(path, prediction))


def _shortened(value, keep: int = 40):
    """A request to read: each base64 image as its first characters and its length (--json prints it whole)."""
    if isinstance(value, dict):
        return {k: (f"{v[:keep]}... ({len(v)} characters)" if k == "b64" and isinstance(v, str) and len(v) > keep
                    else _shortened(v, keep)) for k, v in value.items()}
    if isinstance(value, list):
        return [_shortened(v, keep) for v in value]
    return value


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
        keep_previous=args.keep_previous,
    )
    if args.dry_run:
        print(json.dumps(dry_run(deployment), indent=1))
        return
    model, endpoint = deploy(deployment)
    print(f"deployed {model} to {endpoint}; try: catsdogs predict IMAGE --endpoint {endpoint}")


def cmd_canary(args) -> None:
    """promote / rollback: the canary version's lifecycle on Vertex AI (components/deploy/vertex.py)."""
    from components.deploy.vertex import promote, rollback

    where = (f"model {args.model_display_name!r} on endpoint {args.endpoint_display_name!r} in "
             f"projects/{args.project}/locations/{args.location}")
    if args.dry_run:  # says what would change; reads nothing from Vertex (no credentials needed)
        if args.command == "promote":
            print(f"dry run: would give the canary version of {where} the default alias and all the endpoint's "
                  f"traffic, then undeploy the model's other deployments there (keeping {args.keep_previous})")
        else:
            print(f"dry run: would undeploy the canary version of {where}, give its traffic back to the other "
                  f"deployments and remove its canary alias")
        return
    if args.command == "promote":
        version = promote(args.project, args.location, args.model_display_name, args.endpoint_display_name,
                          args.keep_previous)
        print(f"promoted {version}: it is the default version and takes all the traffic of endpoint "
              f"{args.endpoint_display_name!r}")
    else:
        version = rollback(args.project, args.location, args.model_display_name, args.endpoint_display_name)
        print(f"rolled back {version}: undeployed from endpoint {args.endpoint_display_name!r}, alias canary removed")


def demo_images(rows: list, per_label: int = 2) -> list[str]:
    """A few held-out images per label (TEST first, then VALIDATION; never TRAIN) to show the deployed model's
    predictions on."""
    held_out = (r for r in rows if r.split in ("TEST", "VALIDATION"))
    rows = sorted(held_out, key=lambda r: (r.split != "TEST", r.image_uri))
    picked: dict[str, list[str]] = {}
    for row in rows:
        if len(picked.setdefault(row.label, [])) < per_label:
            picked[row.label].append(row.image_uri)
    return [uri for uris in picked.values() for uri in uris]


def cmd_run(args) -> int:
    from pipelines import progress
    from pipelines.local import local_workdir

    workdir = local_workdir(args.workdir)  # before a sample is generated there
    config = training_config(args)  # a bad flag fails here, before anything runs
    from components.export.core import parse_formats

    parse_formats(args.export_formats)  # so does a bad --export-formats
    explain_arguments(args)  # and a bad --saliency-images
    logs_dir = os.path.join(workdir, "logs")
    progress.clear_logs(logs_dir, keep=(progress.RUN_LOG,))  # main() writes this process's own output there
    # The console is what a person reads; this process's log lines go where its fd 2 goes (run.log unless -v).
    logs.setup(logging.DEBUG if args.verbose else logging.INFO, stream=sys.__stderr__)
    return _run(args, config, progress.Console(sys.stdout, verbose=args.verbose), logs_dir)


def _run(args, config, console, logs_dir: str) -> int:
    from components.prepare.core import scan_images
    from pipelines import progress
    from pipelines.local import PipelineFailed, run_local

    console.print(f"catsdogs run: the pipeline through kfp.local, each step's output in {progress.relative(logs_dir)}/"
                  + ("" if console.verbose else " (--verbose shows it here)"))
    images_root = args.images_root
    if images_root is None:
        from components.sample_data import generate_sample

        images_root = os.path.join(args.workdir, "sample")
        with progress.timed_step(console, "sample", "generating images") as step:
            shutil.rmtree(images_root, ignore_errors=True)
            paths = generate_sample(images_root, per_class=args.per_class, classes=args.classes, seed=args.seed)
            step["summary"] = (f"{len(paths)} images generated ({args.per_class} per class: "
                               f"{', '.join(args.classes)}) in {progress.relative(images_root)}")
    rows = scan_images(images_root)  # fail here, clearly, before the pipeline starts
    try:
        result = run_local(
            images_root, args.workdir, model_name=args.model_name, model_base=args.model_base,
            min_accuracy=args.min_accuracy, max_regression=args.max_regression, record_format=args.format,
            validate_fix=args.fix, max_leakage=args.max_leakage, near_duplicate_distance=args.near_duplicate_distance,
            console=console,
            wandb_project=args.wandb_project, wandb_mode=args.wandb_mode, wandb_group=args.wandb_group,
            export_formats=args.export_formats, max_p99_ms=args.max_p99_ms, min_throughput=args.min_throughput,
            max_memory_mb=args.max_memory_mb, **training_arguments(config), **explain_arguments(args),
        )
    except PipelineFailed as e:
        gate = [line for line in e.step.tail() if "validation failed: " in line]
        if gate:  # the data failed the gate: its one line (counts, where the pairs are listed)
            console.print("catsdogs run: error: " + gate[-1][gate[-1].index("validation failed: "):])
        console.print(f"catsdogs run: step {e.step.name} failed, so the steps after it did not run")
        return 1
    _summary(console, result, args)
    if result.version is not None:
        _predict(console, result, rows)
    return 0


def _summary(console, result, args) -> None:
    from components.evaluate.champion import decision_from_metrics, summary_line
    from components.evaluate.label_issues import ISSUES_FILE
    from pipelines import progress

    metrics = result.metrics
    auc = f", AUC {metrics['auc']:.3f}" if "auc" in metrics else ""
    rows = [("held-out accuracy", f"{result.accuracy:.4f} on {int(metrics.get('examples', 0))} "
                                  f"{metrics.get('split', '')} images{auc}")]
    if result.serving_check:
        rows.append(("serving check", result.serving_check.removeprefix("serving check ")))
    if result.version is None and result.serving_check.startswith("serving check refused:"):
        rows.append(("not deployed", "the serving check refused it"))
    elif result.version is None:
        decision = summary_line(decision_from_metrics(metrics), metrics.get("champion_version"))
        rows.append((decision, ""))
    else:
        rows.append(("deployed", f"version {result.version} at "
                                 f"{progress.relative(storage.join(result.model_base, str(result.version)))}"))
    rows += [("report", progress.relative(report)) for report in result.reports]
    if "ece" in metrics:
        scaled = (f"; {metrics['ece_uncalibrated']:.4f} before temperature scaling (T {metrics['temperature']:.3f})"
                  if "temperature" in metrics else "")
        rows.append(("calibration", f"ECE {metrics['ece']:.4f} (0: probabilities mean what they say){scaled}"))
    if "threshold" in metrics:
        at = f"precision {metrics['precision_at_threshold']:.4f}, recall {metrics['recall_at_threshold']:.4f}"
        rows.append(("threshold", f"{metrics['threshold'] or 0.5:.4f}: {metrics.get('split', '')} {at}"))
    if "label_issues" in metrics and result.reports:
        issues = os.path.join(os.path.dirname(result.reports[0]), ISSUES_FILE)
        rows.append(("label issues", f"{int(metrics['label_issues'])} in {progress.relative(issues)}"))
    if result.exports:
        rows.append(("exports", f"{progress.relative(result.exports)}/ (export.json: parity and latency)"))
    rows.append(("W&B", _wandb_summary(result.wandb_runs)))
    rows.append(("step logs", f"{progress.relative(result.logs_dir)}/ ("
                              + ", ".join(os.path.basename(s.log_path) for s in result.steps) + ")"))
    if result.version is not None:
        rows.append(("serve it", f"catsdogs serve {progress.relative(result.model_base)} --port 8080"))
    console.print()
    for name, text in rows:
        console.print(f"{name:<18} {text}".rstrip())


def _wandb_summary(runs: tuple[str, ...]) -> str:
    from pipelines import progress

    online = [r for r in runs if "://" in r]
    if online:
        return f"{len(online)} runs, e.g. {online[0]}"
    if runs:  # this run's folders only: a glob would upload every earlier run's again
        wandb_dir = progress.relative(os.path.dirname(runs[0]))
        return (f"{len(runs)} offline runs in {wandb_dir}; upload: wandb sync "
                + " ".join(progress.relative(run) for run in runs))
    return "no runs (--wandb-mode disabled)"


def _predict(console, result, rows) -> None:
    from components.serve.client import format_prediction, predict_files
    from components.serve.server import make_server, serve_in_background

    server = make_server(result.model_base, "127.0.0.1", 0)
    serve_in_background(server)
    try:
        console.print(f"predictions from {server.url} (version {server.model.version}):")
        images = demo_images(rows)
        for path, prediction in zip(images, predict_files(images, server.url)):
            console.print("  " + format_prediction(path, prediction))
    finally:
        server.shutdown()
        server.server_close()


def cmd_compile(args) -> None:
    from components.images import Images
    from pipelines.batch import BATCH_PREDICT, compile_pipeline

    if not args.output.endswith((".yaml", ".yml")) or os.path.isdir(args.output):
        raise InputError(f"--output {args.output}: expected a .yaml file to write the pipeline to")
    images = Images.from_registry(args.images_registry, args.images_tag)
    compile_pipeline(args.pipeline, args.output, images, args.machine, args.replicas)
    set_explain_defaults(args, args.output)
    if args.pipeline == BATCH_PREDICT:
        print(f"compiled the Vertex batch-prediction pipeline (Dataflow with {images.components}) to {args.output}")
        return
    print(f"compiled the Vertex pipeline ({args.replicas} x {args.machine} training, images {images.components}, "
          f"{images.trainer}, {images.serving}) to {args.output}")


def cmd_submit(args) -> None:
    import json

    from google.auth.credentials import AnonymousCredentials

    from pipelines.submit import job_request, submit

    with _pipeline_job(args, AnonymousCredentials() if args.dry_run else None) as job:
        if args.dry_run:
            request = {**job_request(job), "serviceAccount": args.service_account,
                       "location": args.region, "project": args.project}
            print(json.dumps(request, indent=2))
            return
        name = submit(job, args.service_account, args.wait)
    print(f"submitted {name}")


@contextlib.contextmanager
def _pipeline_job(args, credentials):
    """The PipelineJob that submit and schedule send: the chosen pipeline compiled to a temporary file with
    the images, machines, parameters, labels and service account of the flags."""
    import tempfile

    from components.images import Images
    from pipelines.batch import compile_pipeline
    from pipelines.submit import build_job

    images = Images.from_registry(args.images_registry, args.images_tag)
    with tempfile.TemporaryDirectory(prefix=f"catsdogs-{args.command}-") as folder:
        template = f"{folder}/pipeline.yaml"
        compile_pipeline(args.pipeline, template, images, args.machine, args.replicas)
        yield build_job(template, args.project, args.region, args.pipeline_root, args.images,
                        explain_params(args) + args.param,
                        enable_caching=not args.no_cache, labels=key_values(args.label, "--label"),
                        credentials=credentials, service_account=args.service_account)


def cmd_schedule(args) -> None:
    import json

    from google.auth.credentials import AnonymousCredentials

    from pipelines import schedule
    from pipelines.submit import check_region

    credentials = AnonymousCredentials() if args.dry_run else None
    if args.list or args.delete:
        check_region(args.region)  # creating checks it with the job's other values (pipelines/submit.py)
    if args.list:
        if args.dry_run:
            print(json.dumps({"method": "ScheduleService.ListSchedules",
                              "parent": f"projects/{args.project}/locations/{args.region}"}, indent=2))
            return
        for found in schedule.list_schedules(args.project, args.region):
            print(json.dumps(found))
        return
    if args.delete:
        if args.dry_run:
            name = schedule.schedule_name(args.delete, args.project, args.region)
            print(json.dumps({"method": "ScheduleService.DeleteSchedule", "name": name}, indent=2))
            return
        print(f"deleted {schedule.delete_schedule(args.delete, args.project, args.region)}")
        return
    missing = [flag for flag, value in (("--cron", args.cron), ("--pipeline-root", args.pipeline_root),
                                        ("--images", args.images)) if not value]
    if missing:
        raise InputError(f"creating a schedule needs {', '.join(missing)} (or use --list / --delete NAME)")
    settings = schedule.schedule_settings(args.cron, args.max_concurrent_runs, args.service_account)
    with _pipeline_job(args, credentials) as job:
        planned = schedule.build_schedule(job, args.display_name or f"catsdogs-{args.pipeline}", credentials)
        if args.dry_run:
            print(json.dumps(schedule.schedule_request(planned, settings), indent=2))
            return
        name = schedule.create_schedule(planned, settings)
    print(f"created {name}: {args.pipeline} at {settings['cron']!r}")


def _add_vertex_build_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", choices=("training", "batch-predict"), default="training",
                        help="training: images to a deployed model; batch-predict: score images with a model "
                             "(default %(default)s)")
    parser.add_argument("--images-registry", default="",
                        help="e.g. us-central1-docker.pkg.dev/PROJECT/catsdogs (default: local image names)")
    parser.add_argument("--images-tag", default="latest", help="(default %(default)s)")
    parser.add_argument("--machine", default="T4_1X",
                        help="training machine preset: CPU, T4_1X, T4_4X, V100_4X, A100_8X, L4_1X ... "
                             "(default %(default)s)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="training machines; more than 1 trains multi-node (default %(default)s)")


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    """Every training parameter as a flag, with TrainConfig's defaults; architectures listed from the registry."""
    from components.train.config import HELP, parameters
    from components.train.models import ARCHITECTURES

    group = parser.add_argument_group("training")
    for name, default in parameters().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):  # on by default: --no-<name> turns it off
            group.add_argument(flag, action=argparse.BooleanOptionalAction if default else "store_true",
                               default=default, help=HELP[name])
        elif name == "architecture":
            group.add_argument(flag, default=default, metavar="NAME",
                               help=f"{HELP[name]}: {', '.join(ARCHITECTURES)} (default %(default)s)")
        else:
            group.add_argument(flag, type=type(default), default=default, help=f"{HELP[name]} (default %(default)s)")


def training_config(args):
    """The TrainConfig of the parsed training flags, checked (one error line for a bad value)."""
    from components.train.config import TrainConfig, parameters

    config = TrainConfig(**{name: getattr(args, name) for name in parameters()})
    config.check()
    return config


def training_arguments(config) -> dict[str, object]:
    """The pipeline arguments of a TrainConfig (its training parameters, by name)."""
    from components.train.config import parameters

    return {name: getattr(config, name) for name in parameters()}


def _add_serving_limits(parser: argparse.ArgumentParser) -> None:
    """The serving check's limits (components/serve_check): `catsdogs check-serving` and `catsdogs run`."""
    parser.add_argument("--max-p99-ms", type=float, default=0.0,
                        help="serving check: refuse above this p99 latency at concurrency 1 (0: no limit)")
    parser.add_argument("--min-throughput", type=float, default=0.0,
                        help="serving check: refuse below this many images/s at concurrency 8 (0: no limit)")
    parser.add_argument("--max-memory-mb", type=float, default=0.0,
                        help="serving check: refuse above this peak server memory (0: no limit)")


def add_explain_flags(parser: argparse.ArgumentParser) -> None:
    """The evaluate step's model card and saliency settings, on `run` (pipeline arguments), `compile` and `submit`
    (the compiled training pipeline's defaults: set_explain_defaults)."""
    from components.evaluate.saliency import SALIENCY_IMAGES

    group = parser.add_argument_group("explanations (the evaluate step's report and model card)")
    group.add_argument("--intended-use", default="", metavar="TEXT",
                       help="the model card's intended use (default: a demonstration classifier's)")
    group.add_argument("--saliency-images", type=int, default=SALIENCY_IMAGES, metavar="N",
                       help="report images with a saliency overlay (integrated gradients; 0: none) "
                            "(default %(default)s)")


def explain_arguments(args) -> dict:
    """The pipeline arguments of add_explain_flags' flags, checked."""
    if args.saliency_images < 0:
        raise InputError(f"--saliency-images must be 0 or more, got {args.saliency_images}")
    return {"intended_use": args.intended_use, "saliency_images": args.saliency_images}


def explain_params(args) -> list[str]:
    """`submit`: add_explain_flags' values that differ from their defaults, as --param KEY=VALUE pairs (a --param
    given too comes later and wins)."""
    from components.evaluate.saliency import SALIENCY_IMAGES

    if args.pipeline != "training" or not hasattr(args, "intended_use"):
        return []
    defaults = {"intended_use": "", "saliency_images": SALIENCY_IMAGES}
    return [f"{name}={value}" for name, value in explain_arguments(args).items() if value != defaults[name]]


def set_explain_defaults(args, template_path: str) -> None:
    """Writes add_explain_flags' values as the compiled training pipeline's parameter defaults."""
    import yaml

    if args.pipeline != "training" or not hasattr(args, "intended_use"):
        return
    with open(template_path) as f:
        spec = yaml.safe_load(f)
    declared = spec["root"]["inputDefinitions"]["parameters"]
    values = explain_arguments(args)
    if all(declared[name].get("defaultValue") == value for name, value in values.items()):
        return  # KFP's own file, untouched
    for name, value in values.items():
        declared[name]["defaultValue"] = value
    with open(template_path, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)


def _add_max_file_bytes(parser: argparse.ArgumentParser) -> None:
    from components.contracts import MAX_FILE_BYTES

    parser.add_argument("--max-file-bytes", type=int, default=MAX_FILE_BYTES, metavar="BYTES",
                        help="a larger input file is an error row, not read (default %(default)s: 64 MiB)")


def _add_dataflow_flags(parser: argparse.ArgumentParser) -> None:
    dataflow = parser.add_argument_group("Dataflow (with --runner DataflowRunner)")
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


class Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line `catsdogs <cmd>: error: ...`, exit 2 (argparse's own
    prints the whole usage above it). Subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        # No prefixes of long flags: `--model` silently meaning `--model-dir` is how a renamed flag loses data.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_validation_flags(parser, every_limit: bool = True) -> None:
    """The validate step's gate; `catsdogs run` takes the ones the pipelines take (every_limit False)."""
    from components.validate import core

    parser.add_argument("--fix", action="store_true",
                        help="set held-out copies of TRAIN images and conflicting rows to DISCARD (cleaned.csv, "
                             "quarantine.csv says why) instead of failing")
    parser.add_argument("--max-leakage", type=int, default=core.MAX_LEAKAGE,
                        help="pairs across splits (exact or near) allowed (default %(default)s)")
    parser.add_argument("--near-duplicate-distance", type=int, default=core.NEAR_DUPLICATE_DISTANCE,
                        help="largest pHash Hamming distance (bits of 64) of near copies (default %(default)s)")
    if not every_limit:
        return
    parser.add_argument("--max-conflicting", type=int, default=core.MAX_CONFLICTING,
                        help="pairs of copies with different labels allowed (default %(default)s)")
    parser.add_argument("--max-imbalance", type=float, default=core.MAX_IMBALANCE,
                        help="fail when TRAIN's largest/smallest label count is over this (default %(default)s: "
                             "reported only)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="catsdogs",
        description="Labelled images -> CSV -> TFRecords -> Keras classifier -> served model, locally or on Vertex AI.",
        epilog=QUIET_HELP,
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show everything libraries print (TensorFlow's C++ lines included) and debug logging")
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
    p.add_argument("--split-by", choices=("path", "content"), default="path",
                   help="without split folders, hash each image's path (files only listed) or its bytes (every file "
                        "read; exact copies share a split) (default %(default)s)")
    p.set_defaults(handler=cmd_prepare)

    p = sub.add_parser("validate", help="check the CSV's images for copies across splits, conflicting labels, "
                                        "near-duplicates, balance and sizes; fail on leakage",
                       description="Reads every image of the CSV once and writes validation.json and pairs.csv to "
                                   "--output-dir. Exits 2 with one line when copies cross splits or labels conflict "
                                   "(more than the limits); --fix writes cleaned.csv instead.")
    p.add_argument("csv", metavar="CSV")
    p.add_argument("--output-dir", required=True, help="folder for validation.json, pairs.csv (and cleaned.csv)")
    _add_validation_flags(p)
    p.add_argument("--image-size", type=int, default=150, help="images smaller than this are counted "
                                                                 "(default %(default)s)")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("convert", help="convert the CSV's images to TFRecords with Apache Beam",
                       description="Reads the CSV (split,image_uri,label), checks every image and writes "
                                   "<split>-SSSSS-of-NNNNN.tfrecord[.gz], labels.json, summary.json and "
                                   "errors-*.csv (bad rows with the reason). Arguments after -- go to Beam.")
    p.add_argument("csv", metavar="CSV")
    p.add_argument("--output-dir", required=True, help="folder for the shards, labels.json, summary.json, errors")
    p.add_argument("--format", choices=RECORD_FORMATS, default=DEFAULT_RECORD_FORMAT,
                   help="jpeg: JPEG bytes (default); tfrecorder: TFRecorder's base64 raw pixels")
    p.add_argument("--compression", choices=("gzip", "none"), default=None,
                   help="default: none for jpeg (JPEGs do not compress), gzip for tfrecorder")
    p.add_argument("--num-shards", type=int, default=0, help="shards per split; 0: one per 1000 records")
    p.add_argument("--max-error-fraction", type=float, default=0.05,
                   help="fail when more rows than this are bad (default %(default)s)")
    _add_max_file_bytes(p)
    p.add_argument("--runner", choices=("DirectRunner", "DataflowRunner"), default="DirectRunner",
                   help="(default %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="DirectRunner processes (default 1: one process, threads per shard use the cores)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the pipeline options, steps and job graph size; run nothing")
    _add_dataflow_flags(p)
    p.set_defaults(handler=cmd_convert, takes_beam_args=True)

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
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default %(default)s)")
    _add_max_file_bytes(p)
    p.add_argument("--runner", choices=("DirectRunner", "DataflowRunner"), default="DirectRunner",
                   help="(default %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the pipeline options, steps and job graph size, run nothing")
    _add_dataflow_flags(p)
    p.set_defaults(handler=cmd_batch_predict, takes_beam_args=True)

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
    p.add_argument("--min-accuracy", type=float, default=MIN_ACCURACY,
                   help="deployable only when held-out accuracy reaches this, besides beating always answering the "
                        "largest class (default %(default)s)")
    p.add_argument("--cache", default="auto", metavar="auto|memory|none|DIR",
                   help="decoded images: auto keeps them in memory when they fit 1 GiB, else re-reads them each "
                        "epoch; DIR caches on disk (default %(default)s)")
    _add_training_flags(p)
    p.set_defaults(handler=cmd_train)

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

    p = sub.add_parser("check-serving", help="serve a SavedModel with the real server, check its answers in every "
                                             "request format and its latency, throughput and memory")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="the candidate SavedModel (the output of catsdogs train)")
    p.add_argument("--images", metavar="CSV_OR_DIR", default=None,
                   help="held-out images: a TFRecord folder, a split,image_uri,label CSV (its TEST rows) or a folder "
                        "of images (default: the held-out split of the TFRecords the model was trained on)")
    _add_serving_limits(p)
    p.add_argument("--concurrency", type=int, default=8, help="clients of the throughput run (default %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="how long each measurement runs (default %(default)s)")
    p.add_argument("--sample", type=int, default=8, help="held-out images sent in each format (default %(default)s)")
    p.add_argument("--output", default=None,
                   help="where serving_check.json goes (default: MODEL_DIR/serving_check.json)")
    p.set_defaults(handler=cmd_check_serving)

    p = sub.add_parser("predict", help="send images to a prediction server and print the labels")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--endpoint", required=True,
                   help="server URL, e.g. http://127.0.0.1:8080, or a Vertex AI endpoint "
                        "projects/P/locations/L/endpoints/E")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per image; with --dry-run the whole request, images included")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="the model's input size: when a request would be over the endpoint's size limit (Vertex "
                        "AI: 1.5 MB), images are downsized to this (default: at most 1024 pixels a side)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the request instead of sending it (each image's base64 shortened, unless --json)")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("deploy",
                       help="upload a SavedModel to Vertex AI as a model version and deploy it to an endpoint",
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
    p.add_argument("--version-aliases", default="",
                   help="comma-separated aliases for the new version, e.g. v2,candidate")
    p.add_argument("--machine-type", default="n1-standard-2", help="(default %(default)s)")
    p.add_argument("--min-replicas", type=int, default=1, help="autoscaling lower bound (default %(default)s)")
    p.add_argument("--max-replicas", type=int, default=1, help="autoscaling upper bound (default %(default)s)")
    p.add_argument("--traffic-percent", type=int, default=100,
                   help="share of the endpoint's traffic for the new version (default %(default)s)")
    p.add_argument("--keep-previous", type=int, default=0,
                   help="earlier deployments of the model that take no traffic to leave deployed for rollback; "
                        "the others are undeployed, as they bill their nodes (default %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the requests instead of sending them")
    p.set_defaults(handler=cmd_deploy)

    for name, text in (("promote", "make the canary version the default one, with all the endpoint's traffic, and "
                                   "undeploy the others"),
                       ("rollback", "undeploy the canary version and drop its alias; the others get its traffic")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--project", required=True)
        p.add_argument("--location", required=True, help="e.g. us-central1")
        p.add_argument("--model-display-name", default="catsdogs", help="(default %(default)s)")
        p.add_argument("--endpoint-display-name", default="catsdogs", help="(default %(default)s)")
        if name == "promote":
            p.add_argument("--keep-previous", type=int, default=0,
                           help="earlier deployments to leave deployed for rollback (default %(default)s)")
        p.add_argument("--dry-run", action="store_true", help="say what would change, without calling Vertex AI")
        p.set_defaults(handler=cmd_canary)

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
    p.add_argument("--format", choices=RECORD_FORMATS, default=DEFAULT_RECORD_FORMAT,
                   help="TFRecord schema of the conversion (default %(default)s)")
    p.add_argument("--model-base", default=None,
                   help="where model versions are published, local or gs:// (default WORKDIR/models/MODEL_NAME)")
    p.add_argument("--min-accuracy", type=float, default=MIN_ACCURACY,
                   help="deploy only when held-out accuracy reaches this, besides beating always answering the "
                        "largest class (default %(default)s)")
    p.add_argument("--max-regression", type=float, default=0.0,
                   help="deploy only when held-out accuracy is at most this much below the served version's, "
                        "scored on the same images (default %(default)s: a tie deploys)")
    _add_serving_limits(p)
    p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                   help="show every step's whole output here too (it always goes to WORKDIR/logs/<step>.log)")
    _add_validation_flags(p.add_argument_group("data validation (the validate step stops the run on leakage)"),
                          every_limit=False)
    _add_training_flags(p)
    add_explain_flags(p)
    p.add_argument("--export-formats", default="", metavar="FORMAT[:QUANTIZE],...",
                   help="also export the trained model, checked against it on TEST: e.g. onnx,tflite:int8 (see "
                        "`catsdogs export`; default: none)")
    wandb = p.add_argument_group("Weights & Biases (one run per step; W&B files go under WORKDIR/wandb)")
    wandb.add_argument("--wandb-project", default=tracking.PROJECT, help="(default %(default)s)")
    wandb.add_argument("--wandb-mode", choices=tracking.MODES,
                       help="default: online when WANDB_API_KEY is set, else offline (upload later: wandb sync)")
    wandb.add_argument("--wandb-group", default="", help="group of the step runs (default: the pipeline run's name)")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("compile", help="compile the Vertex AI pipeline to YAML")
    p.add_argument("--output", default="pipeline.yaml", help="(default %(default)s)")
    _add_vertex_build_flags(p)
    add_explain_flags(p)
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
    add_explain_flags(p)
    p.set_defaults(handler=cmd_submit)
    p = sub.add_parser("schedule", help="create, list or delete Vertex AI pipeline schedules (e.g. weekly retraining)",
                       description="Creates a Vertex AI Pipelines schedule that runs the training (or batch-"
                                   "prediction) pipeline at each --cron tick, with the job `catsdogs submit` would "
                                   "send; --list shows the schedules, --delete NAME removes one created here. "
                                   "--dry-run prints the request and needs no credentials.")
    p.add_argument("--project", required=True)
    p.add_argument("--region", required=True, help="e.g. europe-west4")
    p.add_argument("--cron", default="", help='e.g. "0 3 * * 1" (Mondays 03:00 UTC); "CRON_TZ=Europe/Paris 0 3 * * 1"')
    p.add_argument("--pipeline-root", default="", help="gs:// folder for the pipeline's artifacts")
    p.add_argument("--images", default="", help="gs:// folder of images (training: labelled; batch-predict: to score)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter (repeatable)")
    p.add_argument("--display-name", default="", help="(default catsdogs-PIPELINE)")
    p.add_argument("--max-concurrent-runs", type=int, default=1,
                   help="runs of this schedule at once; a tick while one runs is skipped (default %(default)s)")
    p.add_argument("--service-account", default="", help="service account the runs run as")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="job label (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="list the schedules in the region")
    action.add_argument("--delete", default="", metavar="NAME", help="delete a schedule (ID or full name)")
    p.add_argument("--dry-run", action="store_true", help="print the request, send nothing")
    _add_vertex_build_flags(p)
    p.set_defaults(handler=cmd_schedule)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    beam_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, beam_args = argv[:split], argv[split + 1:]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named with the command, like every other error
        parser.exit(2, f"catsdogs {args.command}: error: unrecognized arguments: {' '.join(unknown)} "
                       f"(see catsdogs {args.command} --help)\n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines drown the progress output
    if args.verbose:
        return _handle(args, beam_args, log_path=None)
    from pipelines import progress

    log_path = process_log(args)
    with progress.quiet_process(log_path):
        code = _handle(args, beam_args, log_path)
    logs.setup(logging.INFO)  # its handler wrote to the terminal's copy, closed now
    return code


def process_log(args) -> str:
    """Where a command's process output goes unless --verbose (said in `catsdogs --help`)."""
    from pipelines import progress

    workdir = getattr(args, "workdir", None) if args.command == "run" else None
    return progress.process_log(args.command, None if storage.is_gcs(workdir or "") else workdir)


QUIET_HELP = ("TensorFlow's C++ start-up lines and whatever else libraries write straight to the terminal go to "
              "WORKDIR/logs/run.log for `run`, else to $XDG_STATE_HOME/catsdogs/COMMAND.log (default "
              "~/.local/state/catsdogs/), replaced by each run; -v/--verbose shows them here instead. Errors are "
              "shown either way.")


def _handle(args, beam_args: list[str], log_path: str | None) -> int:
    """Runs the command's handler: bad input is one error line and exit 2, a TensorFlow error one line and exit 1."""
    logs.setup(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if getattr(args, "takes_beam_args", False):
            code = args.handler(args, beam_args)
        else:
            if beam_args:
                raise InputError(f"arguments after -- are only for `catsdogs convert` and `catsdogs batch-predict`: "
                                 f"{' '.join(beam_args)}")
            code = args.handler(args)
    except InputError as e:
        print(f"catsdogs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not e.filename:
            raise
        # A path the user gave that is missing, of the wrong kind (a file for a folder) or not readable.
        print(f"catsdogs {args.command}: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:
        if _missing_credentials(e):  # any command that reaches Google Cloud without them
            from pipelines.submit import NO_CREDENTIALS

            print(f"catsdogs {args.command}: error: {NO_CREDENTIALS}", file=sys.stderr)
            return 2
        if not _is_tensorflow_error(e):
            raise
        # An op that failed or ran out of memory: TensorFlow's message, first line; its C++ lines are in the log.
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", getattr(e, "message", "") or str(e)).strip()
        print(f"catsdogs {args.command}: error: TensorFlow {type(e).__name__}: {message.splitlines()[0]}"
              + (f" (details in {log_path})" if log_path else ""), file=sys.stderr)
        return 1
    return code or 0


def _missing_credentials(error: BaseException | None) -> bool:
    """google-auth found no credentials, here or as the cause of a library's own error (Beam's, aiplatform's)."""
    exceptions = sys.modules.get("google.auth.exceptions")
    seen = 0
    while exceptions is not None and error is not None and seen < 10:
        if isinstance(error, exceptions.DefaultCredentialsError):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _is_tensorflow_error(error: Exception) -> bool:
    """TensorFlow's OpError family (an op failing, ResourceExhaustedError for out of memory), without importing it."""
    errors = sys.modules.get("tensorflow.python.framework.errors_impl")
    return errors is not None and isinstance(error, errors.OpError)


if __name__ == "__main__":
    sys.exit(main())
