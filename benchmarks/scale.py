"""Cost of conversion (and optionally training) as the image count grows: time should grow linearly, memory not.

    python benchmarks/scale.py [--sizes 1000,20000,50000] [--facts] [--train] [--train-sizes 1000,20000] [--workdir DIR]

For each size N it builds an image folder of N small JPEGs (hard links to a pool of 200 distinct 64x48
images drawn by components.sample_data, so 50k files cost seconds and little disk), writes the CSV with
`prepare`, then runs, each in its own process:
- `catsdogs convert CSV --output-dir OUT --dry-run`: the job graph's size (what Dataflow would be sent);
- `catsdogs convert CSV --output-dir OUT`: wall time, images/s and the process's peak RSS (os.wait4's rusage
  of that child, so one run's peak is not mixed with another's).
With --train, `catsdogs train --epochs 1 --image-size 150` on the converted folders of --train-sizes, with its
peak RSS and wall time. The last lines give the growth from the smallest to the largest size.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
import time

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOL = 200
CLASSES = ("cats", "dogs")


def image_pool(folder: str) -> list[tuple[str, str]]:
    """(label, path) of POOL small distinct JPEGs, drawn once."""
    from components.sample_data import generate_sample

    pool = os.path.join(folder, "pool")
    if not os.path.isdir(pool):
        generate_sample(os.path.join(folder, "pool-full"), per_class=POOL // len(CLASSES), classes=CLASSES)
        for label in CLASSES:
            os.makedirs(os.path.join(pool, label))
            source = os.path.join(folder, "pool-full", label)
            for name in sorted(os.listdir(source)):
                with Image.open(os.path.join(source, name)) as image:
                    small = image.convert("RGB").resize((64, 48))
                buffer = io.BytesIO()
                small.save(buffer, format="JPEG", quality=90)
                with open(os.path.join(pool, label, name), "wb") as f:
                    f.write(buffer.getvalue())
    return [(label, os.path.join(pool, label, name)) for label in CLASSES
            for name in sorted(os.listdir(os.path.join(pool, label)))]


def image_folder(folder: str, size: int, pool: list[tuple[str, str]]) -> str:
    root = os.path.join(folder, f"images-{size}")
    if not os.path.isdir(root):
        for label in CLASSES:
            os.makedirs(os.path.join(root, label))
        for i in range(size):
            label, source = pool[i % len(pool)]
            os.link(source, os.path.join(root, label, f"{label}.{i:07d}.jpg"))
    return root


def run(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, output) of one `catsdogs` command in its own process."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "offline"}
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if process.returncode:
        raise SystemExit(f"catsdogs {' '.join(args)} failed ({process.returncode}):\n{text[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, text  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,20000,50000", help="image counts to convert (default %(default)s)")
    parser.add_argument("--train", action="store_true", help="also train one epoch on --train-sizes")
    parser.add_argument("--train-sizes", default="1000,20000", help="image counts to train on (default %(default)s)")
    parser.add_argument("--facts", action="store_true",
                        help="convert with --facts (each image's facts for `validate --facts`, from the same read)")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    from components.prepare import prepare_csv

    sizes = [int(s) for s in args.sizes.split(",")]
    train_sizes = [int(s) for s in args.train_sizes.split(",")] if args.train else []
    workdir = args.workdir or tempfile.mkdtemp(prefix="catsdogs-scale-")
    pool = image_pool(workdir)
    print(f"workdir {workdir}; cores {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'images':>8} {'convert s':>10} {'img/s':>8} {'peak RSS MiB':>13} {'job graph bytes':>16}")
    converted = {}
    for size in sorted(set(sizes) | set(train_sizes)):
        csv_path = os.path.join(workdir, f"images-{size}.csv")
        prepare_csv(image_folder(workdir, size, pool), csv_path)
        out = os.path.join(workdir, f"records-{size}")
        _, _, text = run(["convert", csv_path, "--output-dir", out, "--dry-run"])
        graph = int(re.search(r"job graph: (\d+) bytes", text).group(1))
        seconds, rss, _ = run(["convert", csv_path, "--output-dir", out, *(["--facts"] if args.facts else [])])
        converted[size] = (seconds, rss, graph)
        print(f"{size:>8} {seconds:>10.1f} {size / seconds:>8.0f} {rss:>13.0f} {graph:>16}", flush=True)
    small, large = min(sizes), max(sizes)
    (t1, rss1, g1), (t2, rss2, g2) = converted[small], converted[large]
    print(f"convert {small} -> {large} images: peak RSS {rss2 - rss1:+.0f} MiB ({rss2 / rss1:.2f}x), job graph "
          f"{g2 - g1:+d} bytes, marginal {(large - small) / (t2 - t1):.0f} img/s, time {t2 / t1:.1f}x")

    trained = {}
    for size in train_sizes:
        seconds, rss, _ = run(["train", "--data", os.path.join(workdir, f"records-{size}"), "--model-dir",
                               os.path.join(workdir, f"model-{size}-{time.time_ns()}"), "--epochs", "1",
                               "--image-size", "150"])
        trained[size] = (seconds, rss)
        print(f"train {size:>8} images, 1 epoch at 150 px: {seconds:7.1f} s, peak RSS {rss:7.0f} MiB", flush=True)
    if len(trained) > 1:
        small, large = min(trained), max(trained)
        print(f"train {small} -> {large} images: peak RSS {trained[large][1] - trained[small][1]:+.0f} MiB, "
              f"time {trained[large][0] / trained[small][0]:.1f}x")


if __name__ == "__main__":
    main()
