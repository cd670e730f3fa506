"""Data validation speed and memory: `catsdogs validate` at several set sizes, and the near-duplicate search alone
over a million synthetic 64-bit hashes.

    python benchmarks/validate.py [--sizes 1000,20000] [--hashes 1000000] [--distance 8] [--workdir DIR]

For each size: generates that many sample JPEGs (~300x400, components/sample_data.py; generation is not timed),
writes the CSV, runs `catsdogs validate` in a fresh process and prints images/s (the whole command, start-up
included) and the process's peak RSS. Then, in a fresh process, the near-duplicate search over N uniformly random
hashes with 1,000 planted near pairs: seconds, the pairs found, and the peak RSS above the process's baseline.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

HASH_SEARCH = """
import resource, sys, time
import numpy as np
from components.validate.near import near_pairs, plan
n, distance = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
for k in range(1000):  # planted pairs at 1..distance bits
    flips = rng.choice(64, size=1 + k % distance, replace=False)
    hashes[n - 1 - k] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in flips))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
i, j, d = near_pairs(hashes, distance)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seconds, len(i), plan(n, distance), base, peak)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def validate_run(size: int, workdir: str) -> tuple[float, float, int]:
    from components.prepare import prepare_csv
    from components.sample_data import generate_sample

    images = os.path.join(workdir, f"images-{size}")
    if not os.path.isdir(images):
        generate_sample(images, per_class=size // 2)
    csv_path = os.path.join(workdir, f"images-{size}.csv")
    prepare_csv(images, csv_path)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "validate", csv_path, "--output-dir",
                           os.path.join(workdir, f"report-{size}"), "--max-leakage", "1000000000",
                           "--max-conflicting", "1000000000"], env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr)
    # the largest child's peak so far; sizes run in increasing order, so a growth shows
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, size / seconds, peak_kib // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,20000", help="comma-separated image counts (default %(default)s)")
    parser.add_argument("--hashes", type=int, default=1_000_000, help="(default %(default)s)")
    parser.add_argument("--distance", type=int, default=8, help="near-duplicate distance (default %(default)s)")
    parser.add_argument("--workdir", default=None, help="keeps the generated images between runs")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="catsdogs-validate-bench-")
    os.makedirs(workdir, exist_ok=True)

    print(f"{'images':>8} {'seconds':>8} {'images/s':>9} {'peak RSS MiB':>13}")
    for size in sorted(int(s) for s in args.sizes.split(",")):
        seconds, rate, peak = validate_run(size, workdir)
        print(f"{size:>8} {seconds:>8.1f} {rate:>9.0f} {peak:>13}", flush=True)

    done = subprocess.run([sys.executable, "-c", HASH_SEARCH, str(args.hashes), str(args.distance)], env=_env(),
                          capture_output=True, text=True, check=True)
    seconds, pairs, bands, base, peak = done.stdout.split()
    print(f"near-duplicate search: {args.hashes} hashes, distance <= {args.distance}, {bands} bands: "
          f"{float(seconds):.1f} s, {pairs} pairs (1000 planted), peak RSS {int(peak) // 1024} MiB "
          f"({(int(peak) - int(base)) // 1024} MiB above the {int(base) // 1024} MiB baseline)")


if __name__ == "__main__":
    main()
