"""What request logging costs the server: `catsdogs serve` with logging off against --log-requests at sample rate 1.0.

    .venv/bin/python benchmarks/serving_logging.py [--duration 60] [--concurrency 16] [--rounds 3]

The seed CNN (150x150, untrained: speed does not depend on the weights) is exported as training exports it, with
the profile_pixels signature (components/monitor/profile.py: the penultimate layer projected to 16 dimensions), so
the logged server makes the profiled model call, computes each image's statistics while decoding, and writes every
image's record. Both servers run
at once and are driven in turn by benchmarks/serving.py's load generator (one 300x400 JPEG per request),
--rounds times in alternating order; figures are medians over the rounds. Memory is each server's peak resident
set (VmHWM) at the end, and the logged server's request counters (written, dropped) come from its /health.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import HOST, IMAGE_SIZE, MAX_REQUESTS_PER_SECOND, drive, jpeg_300x400, start_server


def export_profiled(folder: str) -> str:
    """A model base whose version 1 is the seed CNN exported as `catsdogs train` exports it (with the profile
    signatures the logged server calls)."""
    from components.train.export import export_saved_model
    from components.train.models import seed_cnn

    base = os.path.join(folder, "catsdogs")
    export_saved_model(seed_cnn(IMAGE_SIZE, 2), ["cats", "dogs"], IMAGE_SIZE, os.path.join(base, "1"))
    return base


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds of load per server and round (default 60)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, medians reported (default 3)")
    args = parser.parse_args()
    if not (1 <= args.concurrency <= 64 and 1 <= args.duration <= 600 and 1 <= args.rounds <= 20):
        parser.error("keep the load bounded: concurrency 1..64, duration 1..600 s, rounds 1..20")

    with tempfile.TemporaryDirectory() as folder:
        base = export_profiled(folder)
        logs = os.path.join(folder, "logs")
        body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg_300x400()).decode()}]}).encode()
        serve = [sys.executable, "-m", "pipelines.cli", "serve", base, "--host", HOST, "--port", "0",
                 "--poll-seconds", "0"]
        servers = {"logging off": serve, "--log-requests, sample rate 1.0": [*serve, "--log-requests", logs,
                                                                           "--log-sample-rate", "1.0"]}
        print(f"{os.cpu_count()} CPUs; one 300x400 JPEG per request; {args.duration} s at concurrency "
              f"{args.concurrency}, {args.rounds} rounds", flush=True)
        started = {}
        rps: dict[str, list[float]] = {name: [] for name in servers}
        p99: dict[str, list[float]] = {name: [] for name in servers}
        errors = 0
        try:
            for name, command in servers.items():
                started[name] = start_server(command)
                drive(started[name][1], body, 1, 20, 60)  # warm up
            for round_ in range(args.rounds):
                for name in (list(servers) if round_ % 2 == 0 else list(reversed(servers))):
                    phase = drive(started[name][1], body, args.concurrency,
                                  args.duration * MAX_REQUESTS_PER_SECOND, args.duration)
                    rps[name].append(phase.per_second)
                    p99[name].append(phase.percentile(0.99))
                    errors += len(phase.errors)
                    print(f"  round {round_ + 1} {name}: {phase.per_second:.1f} req/s, p99 "
                          f"{phase.percentile(0.99):.0f} ms", flush=True)
            port = started["--log-requests, sample rate 1.0"][1]
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=60) as response:
                logged = json.loads(response.read())["request_log"]
            memory = {name: peak_rss_mb(process.pid) for name, (process, _) in started.items()}
        finally:
            for process, _ in started.values():
                process.terminate()
                process.wait(60)
        print(f"\n| server | req/s (c={args.concurrency}) | p99 ms | peak RSS MB |")
        print("|---|---|---|---|")
        for name in servers:
            print(f"| {name} | {statistics.median(rps[name]):.1f} | {statistics.median(p99[name]):.0f} "
                  f"| {memory[name]:.0f} |")
        off, on = (statistics.median(rps[name]) for name in servers)
        print(f"\nthroughput with logging: {on / off:.3f}x of without ({(1 - on / off) * 100:+.1f}% loss); "
              f"log: {logged['sampled']} sampled, {logged['written']} written, {logged['queued']} queued, "
              f"{logged['dropped']} dropped; "
              f"errors {errors}")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
