"""Drift monitoring speed and memory: `catsdogs monitor` over N logged requests (default 100,000).

    python benchmarks/monitor.py [--requests 100000] [--workdir DIR]

Writes a model base whose version 1 holds only a baseline.json (2,000 synthetic rows; `monitor` reads no
SavedModel), and N synthetic request records of the same distribution as the server logs them, in files of 10,000
lines. Generation is not timed. Then runs `catsdogs monitor` in a fresh
process and prints its wall time (start-up included), its verdict and its peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from components.monitor.baseline import build_baseline
from components.monitor.profile import BASELINE_FILE, EMBEDDING_DIM

CLASSES = ["cats", "dogs"]


def rows(n: int, rng: np.random.Generator, shift: float = 0.0) -> list[dict]:
    p = rng.beta(2, 2, n)
    embedding = rng.normal(shift, 1.0, (n, EMBEDDING_DIM))
    stats = np.stack([rng.integers(340, 461, n), rng.integers(260, 341, n), rng.uniform(0.3, 0.6, n) - shift / 4,
                      rng.gamma(4, 8, n), np.zeros(n)], axis=1)
    return [{"label": CLASSES[int(q > 0.5)], "probabilities": [1 - q, q], "embedding": e.round(5).tolist(),
             "image_stats": s.round(5).tolist()} for q, e, s in zip(p.tolist(), embedding, stats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="monitor-bench-")
    rng = np.random.default_rng(0)
    version = os.path.join(workdir, "models", "1")
    os.makedirs(version, exist_ok=True)
    open(os.path.join(version, "saved_model.pb"), "wb").close()  # a version folder; the monitor never loads it
    with open(os.path.join(version, BASELINE_FILE), "w") as f:
        json.dump(build_baseline(rows(2000, rng), CLASSES, "TEST"), f)
    logs = os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    for part in range(0, args.requests, 10_000):
        n = min(10_000, args.requests - part)
        batch = rows(n, rng)
        with open(os.path.join(logs, f"requests-{part // 10_000:05d}.jsonl"), "w") as f:
            for i, row in enumerate(batch):
                time_ = (start + dt.timedelta(seconds=part + i)).isoformat()
                f.write(json.dumps({"time": time_, "version": "1", **row}) + "\n")
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "monitor", "--model-base",
                           os.path.join(workdir, "models"), "--logs", logs, "--out", os.path.join(workdir, "out")],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{args.requests} requests: {seconds:.1f} s (exit {done.returncode}), peak RSS {peak:.0f} MB")
    print(done.stdout.strip() or done.stderr.strip()[-2000:])


if __name__ == "__main__":
    main()
