"""Conversion speed and size: our `jpeg` records vs TFRecorder's format, same images, same run.

    python benchmarks/convert.py [--images 2000] [--workers 0] [--workdir DIR]

Generates N labelled JPEGs (~300x400), writes the CSV, converts it with both formats through the same Beam
pipeline (DirectRunner), and prints images/s and bytes/image for each and the ratios. Times include Beam's
start-up, as a user waits for it.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

from components.convert.pipeline import convert
from components.prepare import prepare_csv
from components.sample_data import generate_sample


def folder_bytes(folder: str, suffix: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if ".tfrecord" in n and n.endswith(suffix))


def measure(csv_path: str, out_dir: str, record_format: str, workers: int) -> tuple[float, int, int]:
    start = time.perf_counter()
    summary = convert(csv_path, out_dir, record_format=record_format, direct_workers=workers)
    seconds = time.perf_counter() - start
    return seconds, summary.good, folder_bytes(out_dir, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="images in total (default %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="DirectRunner processes, 0: one per core")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    workdir = args.workdir or tempfile.mkdtemp(prefix="catsdogs-bench-")
    images = os.path.join(workdir, "images")
    if not os.path.isdir(images):
        generate_sample(images, per_class=args.images // 2)
    csv_path = os.path.join(workdir, "images.csv")
    prepare_csv(images, csv_path)
    source_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(images) for f in fs)

    results = {}
    for record_format in ("tfrecorder", "jpeg"):
        seconds, count, size = measure(csv_path, os.path.join(workdir, record_format), record_format, args.workers)
        results[record_format] = (count / seconds, size / count)
        print(f"{record_format:>10}: {count} images in {seconds:6.2f} s = {count / seconds:7.1f} img/s, "
              f"{size / count / 1024:7.1f} KiB/image")
    (base_speed, base_size), (speed, size) = results["tfrecorder"], results["jpeg"]
    print(f"source JPEGs: {source_bytes / (args.images) / 1024:.1f} KiB/image; cores: {os.cpu_count()}")
    print(f"jpeg vs tfrecorder: {speed / base_speed:.1f}x faster, {base_size / size:.1f}x smaller")


if __name__ == "__main__":
    main()
