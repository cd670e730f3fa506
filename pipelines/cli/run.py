"""`catsdogs run`: the whole local pipeline through kfp.local, its closing summary and demo predictions."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

from components import logs, storage, tracking
from components.convert.config import ConvertConfig
from components.evaluate.config import GateConfig
from pipelines.cli.flags import (
    add_config_flags,
    add_explain_flags,
    add_serving_limits,
    add_training_flags,
    add_validation_flags,
    classes,
    explain_arguments,
    training_arguments,
    training_config,
)


def register(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline locally through kfp.local, ending in predictions",
                       description="prepare -> convert -> train -> evaluate -> deploy a new model version, then "
                                   "serve it and predict a few images. Without IMAGES_ROOT a sample is generated.")
    p.add_argument("images_root", metavar="IMAGES_ROOT", nargs="?", help="labelled images (default: generate a sample)")
    p.add_argument("--workdir", required=True,
                   help="local folder for the pipeline outputs (and models/<name>/<version> without --model-base)")
    p.add_argument("--per-class", type=int, default=200, help="sample images per class (default %(default)s)")
    p.add_argument("--classes", type=classes, default=("cats", "dogs"), help="sample classes (default cats,dogs)")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default %(default)s)")
    p.add_argument("--model-name", default="catsdogs", help="deployed model name (default %(default)s)")
    add_config_flags(p, ConvertConfig, "record_format")
    p.add_argument("--model-base", default=None,
                   help="where model versions are published, local or gs:// (default WORKDIR/models/MODEL_NAME)")
    add_config_flags(p, GateConfig)
    add_serving_limits(p)
    p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                   help="show every step's whole output here too (it always goes to WORKDIR/logs/<step>.log)")
    add_validation_flags(p.add_argument_group("data validation (the validate step stops the run on leakage)"),
                          every_limit=False)
    add_training_flags(p)
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
            min_accuracy=args.min_accuracy, max_regression=args.max_regression, record_format=args.record_format,
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
    if result.version is None and result.serving_check.startswith("refused:"):
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
