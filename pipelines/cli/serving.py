"""Serving commands: serve, check-serving, predict (each one's flags beside its handler)."""

from __future__ import annotations

import signal

from components import storage
from components.errors import InputError
from components.serve.limits import GRACE_SECONDS
from components.serve.request_log import MAX_QUEUED
from pipelines.cli.flags import add_serving_limits


def register(sub) -> None:
    add_serve(sub)
    add_check_serving(sub)
    add_predict(sub)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(0)


def cmd_serve(args) -> None:
    from components.serve.server import make_server

    server = make_server(args.model_base, args.host, args.port, model_name=args.model_name,
                         poll_seconds=args.poll_seconds, max_batch=args.max_batch, grace_seconds=args.grace_seconds,
                         log_requests=args.request_log_folder, log_sample_rate=args.request_log_sample_rate,
                         log_buffer=args.log_buffer)
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
        logged = server.server_close()
        if logged is not None:
            print(f"request log: {logged['written']} records in {logged['files']} files under {logged['folder']}, "
                  f"{logged['dropped']} dropped (buffer full), {logged['lost']} lost (write failed)", flush=True)


def add_serve(sub) -> None:
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
    p.add_argument("--log-requests", metavar="DIR", default=None, dest="request_log_folder",  # None: the env var
                   help="log a sample of the answered images (label, probabilities, the model's profile) as JSON "
                        "lines under DIR or gs://... for `catsdogs monitor` "
                        "(default: $CATSDOGS_LOG_REQUESTS, else off)")
    p.add_argument("--log-sample-rate", type=float, default=None, dest="request_log_sample_rate",
                   help="share of images logged, in (0, 1] (default $CATSDOGS_LOG_SAMPLE_RATE, else 1)")
    p.add_argument("--log-buffer", type=int, default=MAX_QUEUED,
                   help="records waiting for the log writer; more are dropped and counted, never waited for "
                        "(default %(default)s)")
    p.set_defaults(handler=cmd_serve)


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


def add_check_serving(sub) -> None:
    p = sub.add_parser("check-serving", help="serve a SavedModel with the real server, check its answers in every "
                                             "request format and its latency, throughput and memory")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="the candidate SavedModel (the output of catsdogs train)")
    p.add_argument("--images", metavar="CSV_OR_DIR", default=None,
                   help="held-out images: a TFRecord folder, a split,image_uri,label CSV (its TEST rows) or a folder "
                        "of images (default: the held-out split of the TFRecords the model was trained on)")
    add_serving_limits(p)
    p.add_argument("--concurrency", type=int, default=8, help="clients of the throughput run (default %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="how long each measurement runs (default %(default)s)")
    p.add_argument("--sample", type=int, default=8, help="held-out images sent in each format (default %(default)s)")
    p.add_argument("--output", default=None,
                   help="where serving_check.json goes (default: MODEL_DIR/serving_check.json)")
    p.set_defaults(handler=cmd_check_serving)


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


def add_predict(sub) -> None:
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
