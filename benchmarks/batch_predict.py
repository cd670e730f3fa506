"""Batch prediction benchmark: `catsdogs batch-predict` (Beam RunInference, local FnApiRunner) against the HTTP
endpoint (`catsdogs serve`) on the same images, same model, same run.

    .venv/bin/python benchmarks/batch_predict.py [--images 1000] [--concurrency 8] [--per-request 1] [--repeats 3]

It writes --images 300x400 JPEGs under <label>/ folders and exports the seed CNN (150x150, untrained: speed does
not depend on the weights) as version 1 of a model base. Each phase runs in its own fresh process:

- batch: `batch_predict(folder, model_base, out)`, timed around the call (pipeline construction, model load on
  the worker, listing, reading, decoding, inference, writing; TensorFlow is imported before the clock starts, as
  in the HTTP phase); run at --images / 4 and --images, with the process's peak RSS, so the fixed cost and the
  memory growth show;
- http: `make_server` + `serve_in_background` (model load and warm-up timed apart), then --concurrency client
  threads sending --per-request images per request with `components.serve.client.predict_files`.

Both phases score every image; the script checks that they give the same label for each. The load generator runs
on the same cores as the server (as Beam's workers do).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

IMAGE_SIZE = 150
CLASSES = ("cats", "dogs")


def write_images(folder: str, count: int) -> None:
    import numpy as np

    from components.sample_data import draw_image

    rng = np.random.default_rng(0)
    for i in range(count):
        label = i % len(CLASSES)
        path = os.path.join(folder, CLASSES[label], f"{CLASSES[label]}.{i:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        draw_image(label, len(CLASSES), rng).resize((400, 300)).save(path, "JPEG", quality=90)


def export_model(base: str) -> None:
    from components.train.export import export_saved_model
    from components.train.models import seed_cnn

    export_saved_model(seed_cnn(IMAGE_SIZE, len(CLASSES)), list(CLASSES), IMAGE_SIZE, os.path.join(base, "1"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_phase(folder: str, base: str, out: str, batch_size: int) -> dict:
    import tensorflow  # noqa: F401 - imported before the clock starts, as the HTTP phase's server module does

    from components.batch_predict.core import batch_predict

    start = time.perf_counter()
    summary = batch_predict(folder, base, out, batch_size)
    seconds = time.perf_counter() - start
    labels = {}
    for path in glob.glob(os.path.join(out, "predictions-*.jsonl")):
        for line in open(path):
            row = json.loads(line)
            labels[row["image_uri"]] = row["label"]
    return {"seconds": seconds, "predictions": summary.predictions, "errors": summary.errors,
            "peak_rss_mib": peak_rss_mib(), "labels": labels}


def http_phase(folder: str, base: str, concurrency: int, per_request: int) -> dict:
    from components.serve.client import predict_files
    from components.serve.server import make_server, serve_in_background

    paths = sorted(glob.glob(os.path.join(folder, "*", "*.jpg")))
    start = time.perf_counter()
    server = make_server(base, "127.0.0.1", 0, poll_seconds=0)
    serve_in_background(server)
    started = time.perf_counter() - start
    chunks = [paths[i:i + per_request] for i in range(0, len(paths), per_request)]
    labels, errors, lock = {}, [], threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not chunks:
                    return
                chunk = chunks.pop()
            try:
                answers = predict_files(chunk, server.url)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                labels.update({p: a["label"] for p, a in zip(chunk, answers)})

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    server.shutdown()
    server.server_close()
    return {"seconds": seconds, "startup_seconds": started, "predictions": len(labels), "errors": len(errors),
            "peak_rss_mib": peak_rss_mib(), "labels": labels}


def in_subprocess(phase: str, **kwargs) -> dict:
    """Runs one phase in a fresh interpreter (its own TensorFlow start-up and peak memory)."""
    command = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--phase-args", json.dumps(kwargs)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{phase} phase failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call in batch-predict")
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP client threads")
    parser.add_argument("--per-request", type=int, default=1, help="images per HTTP request (at most 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each phase; the median is shown")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--phase-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase = {"batch": batch_phase, "http": http_phase}[args.phase]
        print(json.dumps(phase(**json.loads(args.phase_args))))
        return

    with tempfile.TemporaryDirectory(prefix="catsdogs-batch-bench-") as work:
        small, large, base = (os.path.join(work, name) for name in ("small", "large", "models/catsdogs"))
        write_images(small, max(1, args.images // 4))
        write_images(large, args.images)
        export_model(base)
        tries: dict[str, list[dict]] = {"batch-small": [], "batch-large": [], "http": []}
        for _ in range(args.repeats):  # interleaved, so a burst of other work on the machine hits all three
            for name, folder in (("small", small), ("large", large)):
                tries[f"batch-{name}"].append(in_subprocess(
                    "batch", folder=folder, base=base, batch_size=args.batch_size,
                    out=os.path.join(work, f"out-{name}")))
            tries["http"].append(in_subprocess("http", folder=large, base=base, concurrency=args.concurrency,
                                               per_request=args.per_request))
        runs = {name: sorted(found, key=lambda run: run["seconds"])[len(found) // 2] for name, found in tries.items()}
        spread = {name: [round(run["seconds"], 1) for run in found] for name, found in tries.items()}

    batch, http = runs["batch-large"], runs["http"]
    agree = sum(batch["labels"].get(p) == label for p, label in http["labels"].items())
    print(f"{args.images} JPEGs of 300x400, seed CNN at {IMAGE_SIZE} px, {os.cpu_count()} cores; median of "
          f"{args.repeats} interleaved runs (seconds of each: {spread})\n")
    print("| how | images | seconds | img/s | errors | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, run in runs.items():
        images = run["predictions"]
        label = (f"batch-predict (FnApiRunner, batch {args.batch_size})" if name != "http" else
                 f"HTTP endpoint ({args.concurrency} clients, {args.per_request} image(s)/request)")
        print(f"| {label} | {images} | {run['seconds']:.1f} | {images / run['seconds']:.0f} | {run['errors']} | "
              f"{run['peak_rss_mib']:.0f} |")
    http_total = http["seconds"] + http["startup_seconds"]
    print(f"\nHTTP server start-up (model load and warm-up): {http['startup_seconds']:.1f} s; HTTP including it: "
          f"{http['predictions'] / http_total:.0f} img/s")
    ratio = (batch["predictions"] / batch["seconds"]) / (http["predictions"] / http["seconds"])
    print(f"batch-predict / HTTP (warm server): {ratio:.2f}x; labels agree on {agree} of {len(http['labels'])}")
    small_rss, large_rss = runs["batch-small"]["peak_rss_mib"], batch["peak_rss_mib"]
    print(f"batch-predict peak RSS: {small_rss:.0f} MiB at {runs['batch-small']['predictions']} images, "
          f"{large_rss:.0f} MiB at {batch['predictions']}")


if __name__ == "__main__":
    main()
