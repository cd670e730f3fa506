"""Vertex AI commands: deploy, promote / rollback, compile, submit, schedule (each one's flags beside its handler)."""

from __future__ import annotations

import contextlib
import os

from components.deploy.config import DeployConfig
from components.errors import InputError
from pipelines.cli.flags import (
    add_config_flags,
    add_explain_flags,
    add_region,
    add_vertex_build_flags,
    explain_params,
    key_values,
    required_region,
    set_explain_defaults,
)


def register(sub) -> None:
    add_deploy(sub)
    add_canary(sub)
    add_compile(sub)
    add_submit(sub)
    add_schedule(sub)


def cmd_deploy(args) -> None:
    import json

    from components.deploy.vertex import VertexDeployment, deploy, dry_run
    from components.images import Images

    required_region(args)
    deployment = VertexDeployment(
        project=args.project, location=args.region, model_dir=args.model_dir,
        serving_image=Images.from_registry(args.images_registry, args.images_tag).serving,
        model_display_name=args.model_display_name, endpoint_display_name=args.endpoint_display_name,
        machine_type=args.machine_type, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        traffic_percent=args.traffic_percent, version_aliases=tuple(a for a in args.version_aliases.split(",") if a),
        keep_previous=args.keep_previous, log_requests=args.log_requests, log_sample_rate=args.log_sample_rate,
    )
    if args.dry_run:
        print(json.dumps(dry_run(deployment), indent=1))
        return
    model, endpoint = deploy(deployment)
    print(f"deployed {model} to {endpoint}; try: catsdogs predict IMAGE --endpoint {endpoint}")


def add_deploy(sub) -> None:
    p = sub.add_parser("deploy",
                       help="upload a SavedModel to Vertex AI as a model version and deploy it to an endpoint",
                       description="A new version of the model named --model-display-name (if it exists), deployed "
                                   "to the endpoint named --endpoint-display-name (reused, or created).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="gs:// folder holding the SavedModel")
    p.add_argument("--project", required=True)
    add_region(p)
    p.add_argument("--images-registry", required=True, help="where the serving image is, e.g. "
                   "us-central1-docker.pkg.dev/PROJECT/catsdogs")
    p.add_argument("--images-tag", default="latest", help="(default %(default)s)")
    add_config_flags(p, DeployConfig)
    p.add_argument("--dry-run", action="store_true", help="print the requests instead of sending them")
    p.set_defaults(handler=cmd_deploy)


def cmd_canary(args) -> None:
    """promote / rollback: the canary version's lifecycle on Vertex AI (components/deploy/vertex.py)."""
    from components.deploy.vertex import promote, rollback

    required_region(args)
    where = (f"model {args.model_display_name!r} on endpoint {args.endpoint_display_name!r} in "
             f"projects/{args.project}/locations/{args.region}")
    if args.dry_run:  # says what would change; reads nothing from Vertex (no credentials needed)
        if args.command == "promote":
            print(f"dry run: would give the canary version of {where} the default alias and all the endpoint's "
                  f"traffic, then undeploy the model's other deployments there (keeping {args.keep_previous})")
        else:
            print(f"dry run: would undeploy the canary version of {where}, give its traffic back to the other "
                  f"deployments and remove its canary alias")
        return
    if args.command == "promote":
        version = promote(args.project, args.region, args.model_display_name, args.endpoint_display_name,
                          args.keep_previous)
        print(f"promoted {version}: it is the default version and takes all the traffic of endpoint "
              f"{args.endpoint_display_name!r}")
    else:
        version = rollback(args.project, args.region, args.model_display_name, args.endpoint_display_name)
        print(f"rolled back {version}: undeployed from endpoint {args.endpoint_display_name!r}, alias canary removed")


def add_canary(sub) -> None:
    for name, text in (("promote", "make the canary version the default one, with all the endpoint's traffic, and "
                                   "undeploy the others"),
                       ("rollback", "undeploy the canary version and drop its alias; the others get its traffic")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--project", required=True)
        add_region(p)
        add_config_flags(p, DeployConfig, "model_display_name", "endpoint_display_name",
                         *(("keep_previous",) if name == "promote" else ()))
        p.add_argument("--dry-run", action="store_true", help="say what would change, without calling Vertex AI")
        p.set_defaults(handler=cmd_canary)


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


def add_compile(sub) -> None:
    p = sub.add_parser("compile", help="compile the Vertex AI pipeline to YAML")
    p.add_argument("--output", default="pipeline.yaml", help="(default %(default)s)")
    add_vertex_build_flags(p)
    add_explain_flags(p)
    p.set_defaults(handler=cmd_compile)


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


def add_submit(sub) -> None:
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
    add_vertex_build_flags(p)
    add_explain_flags(p)
    p.set_defaults(handler=cmd_submit)


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
                                        ("--images", args.images or args.pipeline == "monitor")) if not value]
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


def add_schedule(sub) -> None:
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
    add_vertex_build_flags(p)
    p.set_defaults(handler=cmd_schedule)
