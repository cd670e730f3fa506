"""Our server against the model servers people pick instead: same SavedModel, same images, same load, one run.

    .venv/bin/python benchmarks/serving_peers.py [--duration 20] [--requests 200] [--rounds 3]

Peers (`pip install -e '.[bench]'` for those that install beside our pins; KServe in its own venv):
  catsdogs serve        micro-batching (--max-batch 32), decode threads, predict_pixels
  LitServe              benchmarks/peers/litserve_server.py: LitAPI with its dynamic batching (max 32, 5 ms)
  KServe (v1 protocol)  benchmarks/peers/kserve_server.py, from --kserve-python (default .venv-peers/bin/python:
                        `python3 -m venv .venv-peers && .venv-peers/bin/pip install tensorflow-cpu==2.21.0
                        kserve==0.21.0`; kserve needs pandas<3, we pin pandas 3)
  BentoML               benchmarks/peers/bentoml_server.py: a batchable API (adaptive batching, max 32), from
                        --bentoml-python (default .venv-bentoml/bin/python: the same with bentoml==1.4.40; it
                        pins opentelemetry 0.4xb0, we pin 0.66b2)
A peer that is not installed is left out with a note. Each peer loads the SavedModel with tf.saved_model.load
and calls `serving_default` (image bytes in, decoded inside the graph), warmed before it serves.

The seed CNN (150 px, untrained: speed does not depend on the weights) is exported as training exports it. All
servers run at once, each in its own process (group), and benchmarks/serving.py's load generator drives them in
turn: --requests sequential requests (c=1: p50/p99), then --duration seconds at --concurrency (throughput, p99),
--rounds times in alternating order; figures are medians over the rounds. Every request is one 300x400 JPEG as
{"instances": [{"b64": ...}]}, to each server's documented predict route. Peak RSS is the sum of VmHWM over the
server's process tree at the end (a bound: the processes' peaks need not coincide). The load generator shares
the cores with the servers.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers.savedmodel import free_port
from serving import HOST, IMAGE_SIZE, MAX_REQUESTS_PER_SECOND, START_TIMEOUT_S, Phase, drive, jpeg_300x400, ratios

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(REPO, "benchmarks", "peers")


@dataclass
class Server:
    name: str
    command: list[str]  # {port} is replaced by the port it is given
    predict_path: str
    health_path: str
    port: int = 0
    process: subprocess.Popen | None = None
    log: str = ""


def servers(model_base: str, image_file: str, kserve_python: str, bentoml_python: str
            ) -> tuple[list[Server], list[str]]:
    """The servers to measure (ours first) and a note for each peer left out."""
    model_dir = os.path.join(model_base, "1")
    kserve_python, bentoml_python = os.path.abspath(kserve_python), os.path.abspath(bentoml_python)  # cwd changes
    out = [Server("catsdogs serve", [sys.executable, "-m", "pipelines.cli", "serve", model_base, "--host", HOST,
                                     "--port", "{port}", "--poll-seconds", "0"], "/predict", "/health")]
    missing = []
    try:
        import litserve  # noqa: F401 - only whether it is installed
        script = os.path.join(PEERS, "litserve_server.py")
        out.append(Server("LitServe 0.2 (batching 32, 5 ms)", [sys.executable, script, model_dir, HOST, "{port}",
                                                              image_file], "/predict", "/health"))
    except ImportError:
        missing.append("LitServe: not installed (pip install -e '.[bench]')")
    if os.path.exists(kserve_python):
        out.append(Server("KServe 0.21 (v1 protocol)", [kserve_python, os.path.join(PEERS, "kserve_server.py"),
                                                        model_dir, HOST, "{port}", image_file],
                          "/v1/models/catsdogs:predict", "/v1/models/catsdogs"))
    else:
        missing.append(f"KServe: no {kserve_python} (see this script's docstring)")
    if os.path.exists(bentoml_python):
        script = os.path.join(PEERS, "bentoml_server.py")
        out.append(Server("BentoML 1.4 (adaptive batching 32)", [bentoml_python, script, model_dir, HOST, "{port}",
                                                                 image_file], "/predict", "/readyz"))
    else:
        missing.append(f"BentoML: no {bentoml_python} (see this script's docstring)")
    return out, missing


def start(server: Server, folder: str) -> None:
    """Starts the server in its own process group and waits until its health route answers 200."""
    server.port = free_port(HOST)
    server.log = os.path.join(folder, f"{server.name.split()[0].lower()}.log")
    command = [part.replace("{port}", str(server.port)) for part in server.command]
    with open(server.log, "w") as log:
        server.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                          env={**os.environ, "PYTHONPATH": REPO}, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{server.port}{server.health_path}", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    with open(server.log) as f:
        tail = f.read()[-3000:]
    raise RuntimeError(f"{server.name} did not start:\n{tail}")


def stop(server: Server) -> None:
    if server.process is None or server.process.poll() is not None:
        return
    os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(30)


def tree_peak_rss_mb(pid: int) -> float:
    """Sum of VmHWM over the process and its descendants (LitServe runs its workers in child processes)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmHWM")), 0)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    stack.extend(int(child) for child in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def measure(started: list[Server], body: bytes, args) -> list[dict]:
    runs: dict[str, list[tuple[Phase, Phase]]] = {s.name: [] for s in started}
    for server in started:
        drive(server.port, body, 1, 20, 60, server.predict_path)  # warm the connection path and lazy set-up
    for round_ in range(args.rounds):
        for server in (started if round_ % 2 == 0 else list(reversed(started))):
            sequential = drive(server.port, body, 1, args.requests, args.duration, server.predict_path)
            loaded = drive(server.port, body, args.concurrency, args.duration * MAX_REQUESTS_PER_SECOND,
                           args.duration, server.predict_path)
            runs[server.name].append((sequential, loaded))
            print(f"  round {round_ + 1} {server.name}: c=1 p50 {sequential.percentile(0.5):.1f} ms, "
                  f"c={args.concurrency} {loaded.per_second:.1f} req/s p99 {loaded.percentile(0.99):.0f} ms, "
                  f"errors {len(sequential.errors) + len(loaded.errors)}", flush=True)
    results = []
    for server in started:
        phases = runs[server.name]
        errors = [e for s, loaded in phases for e in s.errors + loaded.errors]
        if errors:
            print(f"{server.name}: first error: {errors[0]}", file=sys.stderr)
        results.append({"server": server.name,
                        "p50_ms": statistics.median(s.percentile(0.5) for s, _ in phases),
                        "p99_ms": statistics.median(s.percentile(0.99) for s, _ in phases),
                        "rps": statistics.median(loaded.per_second for _, loaded in phases),
                        "p99_ms_loaded": statistics.median(loaded.percentile(0.99) for _, loaded in phases),
                        "requests": sum(len(s.latencies_ms) + len(loaded.latencies_ms) for s, loaded in phases),
                        "errors": len(errors),
                        "peak_rss_mb": tree_peak_rss_mb(server.process.pid)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential requests, c=1 (default %(default)s)")
    parser.add_argument("--duration", type=int, default=20,
                        help="at most this many seconds per phase, server and round (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections under load (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, medians reported (default 3)")
    parser.add_argument("--kserve-python", default=os.path.join(REPO, ".venv-peers", "bin", "python"),
                        help="the python of a venv with kserve and tensorflow-cpu (default %(default)s)")
    parser.add_argument("--bentoml-python", default=os.path.join(REPO, ".venv-bentoml", "bin", "python"),
                        help="the python of a venv with bentoml and tensorflow-cpu (default %(default)s)")
    args = parser.parse_args()
    if not (1 <= args.concurrency <= 64 and 1 <= args.duration <= 600 and 1 <= args.requests <= 10_000
            and 1 <= args.rounds <= 20):
        parser.error("keep the load bounded: concurrency 1..64, duration 1..600 s, requests 1..10000, rounds 1..20")

    from components.train.export import export_saved_model
    from components.train.models import seed_cnn

    with tempfile.TemporaryDirectory() as folder:
        base = os.path.join(folder, "catsdogs")
        export_saved_model(seed_cnn(IMAGE_SIZE, 2), ["cats", "dogs"], IMAGE_SIZE, os.path.join(base, "1"))
        image = jpeg_300x400()
        image_file = os.path.join(folder, "warm.jpg")
        with open(image_file, "wb") as f:
            f.write(image)
        body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
        chosen, missing = servers(base, image_file, args.kserve_python, args.bentoml_python)
        for note in missing:
            print(f"left out: {note}", flush=True)
        print(f"{os.cpu_count()} CPUs; one 300x400 JPEG per request ({len(body)} bytes); {args.requests} requests "
              f"at c=1, {args.duration} s at c={args.concurrency}, {args.rounds} rounds", flush=True)
        try:
            for server in chosen:
                start(server, folder)
            results = measure(chosen, body, args)
        finally:
            for server in chosen:
                stop(server)
    c = args.concurrency
    print(f"\n| server | p50 ms (c=1) | p99 ms (c=1) | req/s (c={c}) | p99 ms (c={c}) | errors | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['server']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.0f} | {r['p99_ms_loaded']:.0f} "
              f"| {r['errors']} of {r['requests'] + r['errors']} | {r['peak_rss_mb']:.0f} |")
    ours = results[0]
    for r in results[1:]:
        print(f"ours vs {r['server']}: {ratios(ours, r, c)}, "
              f"peak RSS {ours['peak_rss_mb'] / r['peak_rss_mb']:.2f}x (latency, memory: lower is better)")
    if any(r["errors"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
