"""Data validation speed and memory: `catsdogs validate` at several set sizes, and the near-duplicate search alone
over a million synthetic 64-bit hashes.

    python benchmarks/validate.py [--sizes 1000,20000,50000] [--image-px 64] [--hashes 1000000] [--distance 8]
                                  [--workdir DIR] [--facts]

For each size: generates that many distinct small JPEGs (--image-px square: blotchy backgrounds with a shape, so
no two share a perceptual hash; generation is not timed; 0 generates components/sample_data.py's ~300x400 ones),
writes the CSV, runs `catsdogs validate` in a fresh process and prints the whole command's seconds (start-up
included), images/s, and that process's own peak RSS (os.wait4: a flat column means memory does not grow with the
images). With --facts, as the pipelines run it: the images are first converted with `catsdogs convert --facts`
(not timed), and `catsdogs validate --facts --records-out` (reading no image, handing the records on) is timed.
Then, in a fresh process, the near-duplicate search over N uniformly random hashes with 1,000 planted
near pairs: seconds, the pairs found, and the peak RSS above the process's baseline.
"""

from __future__ import annotations

import argparse
import os
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
start, cpu = time.perf_counter(), time.process_time()
i, j, d = near_pairs(hashes, distance)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seconds, cpu, len(i), plan(n, distance), base, peak)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def small_images(folder: str, count: int, px: int) -> None:
    """`count` distinct px x px JPEGs under folder/cats and folder/dogs (skipped when already there)."""
    import numpy as np
    from PIL import Image, ImageDraw

    for index, label in enumerate(("cats", "dogs")):
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        for i in range(count // 2):
            path = os.path.join(folder, label, f"{label}.{i:06d}.jpg")
            if os.path.exists(path):
                continue
            rng = np.random.default_rng([11, index, i])
            grid = rng.uniform(30, 225, size=(6, 6, 3)).astype(np.uint8)
            image = Image.fromarray(grid).resize((px, px), Image.BICUBIC)
            x, y, size = (int(v) for v in rng.integers(0, px // 2, size=3))
            ImageDraw.Draw(image).ellipse((x, y, x + size + 8, y + size + 8),
                                          fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
            image.save(path, format="JPEG", quality=90)


def validate_run(size: int, workdir: str, px: int, facts: bool = False) -> tuple[float, float, float, int]:
    from components.prepare import prepare_csv

    images = os.path.join(workdir, f"images-{size}-{px}")
    if px:
        small_images(images, size, px)
    elif not os.path.isdir(images):
        from components.sample_data import generate_sample

        generate_sample(images, per_class=size // 2)
    csv_path = os.path.join(workdir, f"images-{size}-{px}.csv")
    prepare_csv(images, csv_path)
    command = [sys.executable, "-m", "pipelines.cli", "validate", csv_path, "--output-dir",
               os.path.join(workdir, f"report-{size}-{px}"), "--max-leakage", "1000000000", "--max-conflicting",
               "1000000000"]
    if facts:
        converted, records = (os.path.join(workdir, f"{name}-{size}-{px}") for name in ("converted", "records"))
        if not os.path.isfile(os.path.join(converted, "summary.json")):
            subprocess.run([sys.executable, "-m", "pipelines.cli", "convert", csv_path, "--output-dir", converted,
                            "--facts"], env=_env(), check=True, capture_output=True)
        subprocess.run(["rm", "-rf", records], check=True)
        command += ["--facts", converted, "--records-out", records]
    start = time.perf_counter()
    with open(os.path.join(workdir, f"validate-{size}-{px}.log"), "w") as log:
        process = subprocess.Popen(command, env=_env(), stdout=log, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS, not the largest so far
    seconds = time.perf_counter() - start
    if status:
        sys.exit(f"catsdogs validate failed: see {log.name}")
    return seconds, usage.ru_utime + usage.ru_stime, size / seconds, usage.ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,20000,50000",
                        help="comma-separated image counts (default %(default)s)")
    parser.add_argument("--image-px", type=int, default=64,
                        help="side of the generated images; 0: sample_data's ~300x400 (default %(default)s)")
    parser.add_argument("--hashes", type=int, default=1_000_000, help="(default %(default)s)")
    parser.add_argument("--distance", type=int, default=8, help="near-duplicate distance (default %(default)s)")
    parser.add_argument("--workdir", default=None, help="keeps the generated images between runs")
    parser.add_argument("--facts", action="store_true",
                        help="validate from `convert --facts` output, as the pipelines do (no image read)")
    parser.add_argument("--no-hashes", action="store_true", help="skip the near-duplicate search alone")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="catsdogs-validate-bench-")
    os.makedirs(workdir, exist_ok=True)

    # CPU seconds beside the wall clock: on a shared machine the wall clock says more about the neighbours
    print(f"{'images':>8} {'seconds':>8} {'CPU s':>7} {'images/s':>9} {'peak RSS MiB':>13}")
    for size in sorted(int(s) for s in args.sizes.split(",") if s):
        seconds, cpu, rate, peak = validate_run(size, workdir, args.image_px, args.facts)
        print(f"{size:>8} {seconds:>8.1f} {cpu:>7.1f} {rate:>9.0f} {peak:>13}", flush=True)
    if args.no_hashes:
        return

    done = subprocess.run([sys.executable, "-c", HASH_SEARCH, str(args.hashes), str(args.distance)], env=_env(),
                          capture_output=True, text=True, check=True)
    seconds, cpu, pairs, bands, base, peak = done.stdout.split()
    print(f"near-duplicate search: {args.hashes} hashes, distance <= {args.distance}, {bands} bands: "
          f"{float(seconds):.1f} s ({float(cpu):.1f} s CPU), {pairs} pairs (1000 planted), "
          f"peak RSS {int(peak) // 1024} MiB "
          f"({(int(peak) - int(base)) // 1024} MiB above the {int(base) // 1024} MiB baseline)")


if __name__ == "__main__":
    main()
