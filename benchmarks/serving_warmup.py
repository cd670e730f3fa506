"""First-request latency of `catsdogs serve` after a start and after a hot swap, against its steady-state p50.

    .venv/bin/python benchmarks/serving_warmup.py [--starts 3] [--requests 100]

The seed CNN (150x150, untrained: speed does not depend on the weights) is exported as our SavedModel twice: with
warm-up records (`assets.extra/tf_serving_warmup_requests`, four generated 300x400 JPEGs, as training writes
held-out images) and without (the server then warms up with a blank image). For each, --starts times: start
`catsdogs serve` on a model base holding version 1, time the first request (a new connection, one 300x400 JPEG as
{"instances": [{"b64": ...}]}, sent once /health answers, as a load balancer sends traffic), then --requests
sequential requests on one keep-alive connection (steady-state p50); then publish version 2 (a rename, as
`publish_version` does), wait until /health names it, and time the first request after the swap. Each figure is
the median over the starts; the ratio is first request / steady-state p50 (target: at most 2).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOST = "127.0.0.1"
IMAGE_SIZE = 150
START_TIMEOUT_S = 180


def jpeg(seed: int) -> bytes:
    import numpy as np

    from components.sample_data import draw_image

    image = draw_image(seed, 2, np.random.default_rng(seed)).resize((400, 300))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def build(folder: str, records: bool) -> str:
    """A SavedModel of the untrained seed CNN in folder, with warm-up records or without."""
    from components import warmup
    from components.train.export import export_saved_model
    from components.train.models import seed_cnn

    export_saved_model(seed_cnn(IMAGE_SIZE, 2), ["cats", "dogs"], IMAGE_SIZE, folder)
    if records:
        warmup.write_warmup(folder, [jpeg(seed) for seed in range(1, 1 + warmup.RECORDS)])
    return folder


def post(connection: http.client.HTTPConnection, body: bytes) -> float:
    """Milliseconds of one /predict request; RuntimeError unless it answers 200."""
    start = time.perf_counter()
    connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    reply = response.read()
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {reply[:200]!r}")
    return elapsed


def served_version(port: int) -> int:
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        connection.request("GET", "/health")
        return json.loads(connection.getresponse().read())["version"]
    finally:
        connection.close()


def one_start(model: str, body: bytes, requests: int) -> dict:
    with tempfile.TemporaryDirectory() as base:
        shutil.copytree(model, os.path.join(base, "1"))
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", base, "--host", HOST, "--port",
                                    "0", "--poll-seconds", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            port = None
            while port is None and time.monotonic() < deadline:
                line = process.stdout.readline()
                if not line:
                    raise RuntimeError("the server exited before serving")
                if line.startswith("serving"):
                    port = int(line.split(" at ", 1)[1].split()[0].rsplit(":", 1)[1])
            served_version(port)  # healthy: where Vertex (or any load balancer) starts sending traffic
            first = post(http.client.HTTPConnection(HOST, port, timeout=60), body)
            connection = http.client.HTTPConnection(HOST, port, timeout=60)
            steady = [post(connection, body) for _ in range(requests)]
            staging = os.path.join(base, ".2-staging")
            shutil.copytree(model, staging)
            os.rename(staging, os.path.join(base, "2"))
            while served_version(port) != 2:  # loaded and warmed before it is swapped in
                time.sleep(0.05)
            swapped = post(http.client.HTTPConnection(HOST, port, timeout=60), body)
        finally:
            process.terminate()
            process.wait(30)
    return {"first_ms": first, "p50_ms": statistics.median(steady), "swap_first_ms": swapped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="server starts per model (default %(default)s)")
    parser.add_argument("--requests", type=int, default=100,
                        help="sequential requests for the steady-state p50 (default %(default)s)")
    args = parser.parse_args()
    if not (1 <= args.starts <= 20 and 10 <= args.requests <= 2000):
        parser.error("keep it bounded: --starts 1..20, --requests 10..2000")
    body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg(0)).decode()}]}).encode()
    print(f"{os.cpu_count()} CPUs; one 300x400 JPEG per request; {args.starts} starts per model, "
          f"{args.requests} steady-state requests", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, records in (("warm-up records replayed", True), ("blank-image warm-up only", False)):
            model = build(os.path.join(folder, name.split()[0]), records)
            runs = [one_start(model, body, args.requests) for _ in range(args.starts)]
            row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            row["name"] = name
            print(f"  {name}: {json.dumps({k: round(v, 1) for k, v in row.items() if k != 'name'})}", flush=True)
            rows.append(row)
    print("\n| model | first request after start, ms | after hot swap, ms | steady p50, ms | start / p50 | "
          "swap / p50 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['first_ms']:.1f} | {r['swap_first_ms']:.1f} | {r['p50_ms']:.1f} | "
              f"{r['first_ms'] / r['p50_ms']:.2f}x | {r['swap_first_ms'] / r['p50_ms']:.2f}x |")


if __name__ == "__main__":
    main()
