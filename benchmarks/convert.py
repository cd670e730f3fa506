"""Conversion speed and size: our `jpeg` records vs TFRecorder's format, same images, same run.

    python benchmarks/convert.py [--images 2000] [--workers 1] [--workdir DIR]

Generates N labelled JPEGs (~300x400), writes the CSV, converts it with both formats through the same Beam
pipeline (local FnApiRunner), and prints for each format:
- total images/s (Beam's start-up included, as a user waits for it),
- marginal images/s between a run of N/4 and a run of N images (the cost of one more image, start-up excluded),
- bytes/image,
and the ratios: jpeg vs tfrecorder, and each format's marginal rate vs the bare per-image work (read, check,
encode in one Python thread, no Beam) measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
import time

from components.convert import schema
from components.convert.images import to_rgb_jpeg, to_rgb_pixels
from components.convert.pipeline import convert
from components.convert.writer import ShardFile
from components.prepare import prepare_csv
from components.sample_data import generate_sample


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if ".tfrecord" in n)


def measure(csv_path: str, out_dir: str, record_format: str, workers: int) -> tuple[float, int, int]:
    start = time.perf_counter()
    summary = convert(csv_path, out_dir, record_format=record_format, direct_workers=workers)
    seconds = time.perf_counter() - start
    return seconds, summary.good, folder_bytes(out_dir)


def bare_rate(csv_path: str, record_format: str) -> float:
    """Images/s of the per-image work alone: read the file, check it, build the record and frame (and for
    tfrecorder deflate) it as the shard writer does, one thread, no Beam."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    gzip = record_format == "tfrecorder"
    start = time.perf_counter()
    for row in rows:
        with open(row["image_uri"], "rb") as image:
            data = image.read()
        if gzip:
            pixels, height, width = to_rgb_pixels(data)
            record = schema.tfrecorder_example(pixels, height, width, row["image_uri"], 0, row["split"])
        else:
            jpeg, height, width = to_rgb_jpeg(data)
            record = schema.jpeg_example(jpeg, height, width, row["image_uri"], 0, row["label"], row["split"])
        ShardFile.encode(record, gzip)
    return len(rows) / (time.perf_counter() - start)


def every_nth_row(csv_path: str, out_path: str, n: int) -> str:
    """A smaller CSV with every n-th row (rows are sorted by path: a head would hold one label only)."""
    with open(csv_path) as f, open(out_path, "w") as out:
        out.write(next(f))
        out.writelines(line for i, line in enumerate(f) if i % n == 0)
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="images in total (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="local runner processes (default %(default)s)")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    workdir = args.workdir or tempfile.mkdtemp(prefix="catsdogs-bench-")
    images = os.path.join(workdir, "images")
    if not os.path.isdir(images):
        generate_sample(images, per_class=args.images // 2)
    csv_path = os.path.join(workdir, "images.csv")
    prepare_csv(images, csv_path)
    small_csv = every_nth_row(csv_path, os.path.join(workdir, "small.csv"), 4)
    source_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(images) for f in fs)

    results = {}
    for record_format in ("tfrecorder", "jpeg"):
        small_seconds, small_count, _ = measure(small_csv, os.path.join(workdir, f"{record_format}-small"),
                                                record_format, args.workers)
        seconds, count, size = measure(csv_path, os.path.join(workdir, record_format), record_format, args.workers)
        # A busy machine can make the small run slower than the large one: then there is no marginal figure.
        marginal = (count - small_count) / (seconds - small_seconds) if seconds > small_seconds else float("nan")
        bare = bare_rate(csv_path, record_format)
        results[record_format] = (count / seconds, size / count, marginal)
        print(f"{record_format:>10}: {count} images in {seconds:6.2f} s = {count / seconds:7.1f} img/s total, "
              f"{marginal:7.1f} img/s marginal ({small_count} -> {count} images), "
              f"{size / count / 1024:7.1f} KiB/image; "
              f"bare per-image work {bare:7.1f} img/s on one thread (pipeline marginal {marginal / bare:.2f}x it)")
    (base_speed, base_size, base_marginal), (speed, size, marginal) = results["tfrecorder"], results["jpeg"]
    print(f"source JPEGs: {source_bytes / args.images / 1024:.1f} KiB/image; cores: {os.cpu_count()}; "
          f"load average: {os.getloadavg()[0]:.1f}")
    print(f"jpeg vs tfrecorder: {speed / base_speed:.1f}x faster in total, {marginal / base_marginal:.1f}x marginal, "
          f"{base_size / size:.1f}x smaller")


if __name__ == "__main__":
    main()
