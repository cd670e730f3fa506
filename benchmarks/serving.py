"""Serving benchmark: our server against a naive one (one Keras `model.predict` per request), same run, same model.

    .venv/bin/python benchmarks/serving.py [--duration 60] [--requests 300] [--rounds 1] [--before CHECKOUT]

It exports the seed CNN (150x150, untrained: speed does not depend on the weights) both as our SavedModel and as
a .keras file, starts each server in its own process on 127.0.0.1, and drives it with a bounded load generator:
--requests sequential requests (concurrency 1: p50/p99 latency), then --duration seconds at --concurrency
(throughput). All servers run at once and are driven in turn, --rounds times in alternating order, and each
figure is the median over the rounds: on a shared machine, load from elsewhere then falls on all of them alike.
Every request carries one 300x400 JPEG as {"instances": [{"b64": ...}]}; any answer other than 200 with one
prediction counts as an error. The load generator runs on the same cores as the server.

Servers: catsdogs (micro-batching), catsdogs --max-batch 1 (same server, no batching: what batching adds),
and the naive baseline: ThreadingHTTPServer, decode, then model.predict under a lock (Keras models are not
safe to call from several threads at once). --before CHECKOUT adds `catsdogs serve` from another checkout of
this repository (e.g. a git worktree of the previous commit), so a change is compared in the same run, on the
same load.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOST = "127.0.0.1"  # load goes to this machine only
IMAGE_SIZE = 150
START_TIMEOUT_S = 180
MAX_REQUESTS_PER_SECOND = 5000  # bounds the request count of a timed phase too


def build_models(folder: str) -> tuple[str, str]:
    """(model base with version 1 of our SavedModel, .keras file) of the same untrained seed CNN."""
    from components.train.export import export_saved_model
    from components.train.models import seed_cnn

    model = seed_cnn(IMAGE_SIZE, 2)
    base = os.path.join(folder, "catsdogs")
    export_saved_model(model, ["cats", "dogs"], IMAGE_SIZE, os.path.join(base, "1"))
    keras_file = os.path.join(folder, "seed_cnn.keras")
    model.save(keras_file)
    return base, keras_file


def jpeg_300x400() -> bytes:
    import numpy as np

    from components.sample_data import draw_image

    image = draw_image(0, 2, np.random.default_rng(0)).resize((400, 300))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


# --- the naive baseline server (run in its own process by this script) ---

def serve_baseline(keras_file: str) -> None:
    """The seed project's way: for each request, decode the image and call model.predict on it alone."""
    from http import HTTPStatus
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import keras
    import numpy as np
    import tensorflow as tf

    from components.decode import decode_and_resize

    model = keras.models.load_model(keras_file)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as in our server: a fair fight is about the model calls, not TCP

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            images = [decode_and_resize(base64.b64decode(i["b64"]), IMAGE_SIZE) for i in body["instances"]]
            with lock:
                outputs = model.predict(np.stack(images), verbose=0)
            reply = json.dumps({"predictions": [{"label": "dogs" if p[0] > 0.5 else "cats",
                                                 "probabilities": {"cats": 1 - float(p[0]), "dogs": float(p[0])}}
                                                for p in outputs]}).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    tf.constant(0)  # TensorFlow's start-up happens before the "serving" line, as in our server
    ThreadingHTTPServer.request_queue_size = 128  # as in our server: 16 connections at once are not refused
    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    print(f"serving baseline at http://{HOST}:{server.server_address[1]}", flush=True)
    server.serve_forever()


# --- load generation ---

@dataclass
class Phase:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    @property
    def per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0


def _worker(port: int, body: bytes, phase: Phase, lock: threading.Lock, deadline: float, budget: list[int],
            path: str) -> None:
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    while time.monotonic() < deadline:
        with lock:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        start = time.perf_counter()
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            reply = response.read()
            answer = json.loads(reply) if response.status == 200 else None
            # {"predictions": [...]}, or a bare list of them (BentoML's batchable APIs, benchmarks/serving_peers.py)
            ok = answer is not None and len(answer if isinstance(answer, list) else answer["predictions"]) == 1
            error = None if ok else f"{response.status}: {reply[:200]!r}"
        except Exception as e:  # noqa: BLE001 - every failure is an error to report
            error = repr(e)
            connection.close()
            connection = http.client.HTTPConnection(HOST, port, timeout=60)
        elapsed_ms = (time.perf_counter() - start) * 1000
        with lock:
            phase.latencies_ms.append(elapsed_ms) if error is None else phase.errors.append(error)
    connection.close()


def drive(port: int, body: bytes, concurrency: int, requests: int, seconds: float, path: str = "/predict") -> Phase:
    """At most `requests` requests and at most `seconds` seconds, from `concurrency` keep-alive connections, each
    POSTing `body` to `path`."""
    phase, lock, budget = Phase(), threading.Lock(), [requests]
    start = time.monotonic()
    workers = [threading.Thread(target=_worker, args=(port, body, phase, lock, start + seconds, budget, path))
               for _ in range(concurrency)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    phase.seconds = time.monotonic() - start
    return phase


def start_server(command: list[str], checkout: str | None = None) -> tuple[subprocess.Popen, int]:
    """Starts a server, from another checkout if given (`python -m` puts the working folder first on sys.path)."""
    env = None if checkout is None else {**os.environ, "PYTHONPATH": checkout}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=checkout)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("serving"):
            return process, int(line.split(" at ", 1)[1].split()[0].rsplit(":", 1)[1])
    process.kill()
    raise RuntimeError(f"{' '.join(command)} did not start")


def measure(servers: dict[str, tuple[list[str], str | None]], body: bytes, args) -> list[dict]:
    """Starts every server, then drives them in --rounds rounds, in alternating order, so that load from
    elsewhere on the machine falls on all of them alike; each figure is the median over the rounds."""
    started = {}
    try:
        for name, (command, checkout) in servers.items():
            started[name] = start_server(command, checkout)
            drive(started[name][1], body, 1, 20, 60)  # warm the connection path and any lazy set-up
        phases: dict[str, list[tuple[Phase, Phase]]] = {name: [] for name in servers}
        for round_ in range(args.rounds):
            for name in (list(servers) if round_ % 2 == 0 else list(reversed(servers))):
                port = started[name][1]
                sequential = drive(port, body, 1, args.requests, args.duration)
                loaded = drive(port, body, args.concurrency, args.duration * MAX_REQUESTS_PER_SECOND, args.duration)
                phases[name].append((sequential, loaded))
    finally:
        for process, _ in started.values():
            process.terminate()
            process.wait(30)
    results = []
    for name, runs in phases.items():
        errors = [e for sequential, loaded in runs for e in sequential.errors + loaded.errors]
        result = {"server": name,
                  "p50_ms": statistics.median(s.percentile(0.5) for s, _ in runs),
                  "p99_ms": statistics.median(s.percentile(0.99) for s, _ in runs),
                  "rps": statistics.median(loaded.per_second for _, loaded in runs),
                  "requests": sum(len(s.latencies_ms) + len(loaded.latencies_ms) for s, loaded in runs),
                  "errors": len(errors),
                  "p50_ms_loaded": statistics.median(loaded.percentile(0.5) for _, loaded in runs),
                  "p99_ms_loaded": statistics.median(loaded.percentile(0.99) for _, loaded in runs)}
        if errors:
            print(f"{name}: first error: {errors[0]}", file=sys.stderr)
        print(f"  {name}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()})}",
              flush=True)
        results.append(result)
    return results


def ratios(ours: dict, other: dict, concurrency: int) -> str:
    """One measured server against another, as ratios of ours to theirs: throughput, p50 and p99 at c=1, p99 under
    load."""
    return (f"throughput {ours['rps'] / other['rps']:.2f}x, p50 {ours['p50_ms'] / other['p50_ms']:.2f}x, "
            f"p99 {ours['p99_ms'] / other['p99_ms']:.2f}x, "
            f"p99 at c={concurrency} {ours['p99_ms_loaded'] / other['p99_ms_loaded']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300,
                        help="sequential requests, concurrency 1 (default %(default)s)")
    parser.add_argument("--duration", type=int, default=60,
                        help="seconds of load per server and round (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="connections in the load phase (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every server this many times, alternating, and report medians (default 1)")
    parser.add_argument("--before", metavar="CHECKOUT",
                        help="also measure `catsdogs serve` from this checkout (e.g. a worktree of the last commit)")
    parser.add_argument("--baseline-server", metavar="KERAS_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        serve_baseline(args.baseline_server)
        return
    if not (1 <= args.concurrency <= 64 and 1 <= args.duration <= 600 and 1 <= args.requests <= 10_000
            and 1 <= args.rounds <= 20):
        parser.error("keep the load bounded: concurrency 1..64, duration 1..600 s, requests 1..10000, rounds 1..20")

    import tensorflow as tf

    with tempfile.TemporaryDirectory() as folder:
        base, keras_file = build_models(folder)
        body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg_300x400()).decode()}]}).encode()
        serve = [sys.executable, "-m", "pipelines.cli", "serve", base, "--host", HOST, "--port", "0",
                 "--poll-seconds", "0"]
        print(f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}; one 300x400 JPEG per request "
              f"({len(body)} bytes); {args.requests} requests at concurrency 1, {args.duration} s at "
              f"concurrency {args.concurrency}", flush=True)
        servers = {"catsdogs (micro-batching)": (serve, None),
                   "catsdogs --max-batch 1 (no batching)": ([*serve, "--max-batch", "1"], None)}
        if args.before:
            servers[f"catsdogs at {args.before} (micro-batching)"] = (serve, os.path.abspath(args.before))
        servers["naive: model.predict per request"] = ([sys.executable, __file__, "--baseline-server", keras_file],
                                                       None)
        results = measure(servers, body, args)
    print(f"\n| server | p50 ms (c=1) | p99 ms (c=1) | req/s (c={args.concurrency}) | p99 ms (c={args.concurrency}) "
          "| requests | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['server']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.0f} | {r['p99_ms_loaded']:.0f} "
              f"| {r['requests']} | {r['errors']} |")
    ours, naive = results[0], results[-1]
    print(f"\nthroughput vs naive: {ours['rps'] / naive['rps']:.1f}x; "
          f"median latency at c=1 vs naive: {naive['p50_ms'] / ours['p50_ms']:.1f}x lower")
    if args.before:
        before = results[2]
        print(f"vs {args.before}: {ratios(ours, before, args.concurrency)} (times: lower is better)")
    if any(r["errors"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
