"""Conversion speed and size: our `jpeg` records vs TFRecorder's format, same images, same run.

    python benchmarks/convert.py [--images 2000] [--workers 1] [--workdir DIR]
    python benchmarks/convert.py --writers [--images 1000] [--format jpeg]


Generates N labelled JPEGs (~300x400), writes the CSV, converts it with both formats through the same Beam
pipeline (local FnApiRunner), and prints for each format:
- total images/s (Beam's start-up included, as a user waits for it),
- marginal images/s between a run of N/4 and a run of N images (the cost of one more image, start-up excluded),
- bytes/image,
and the ratios: jpeg vs tfrecorder, and each format's marginal rate vs the bare per-image work (read, check,
encode in one Python thread, no Beam) measured in the same run.

--writers instead compares our shard writer (components/convert/writer.py) with Beam's stock `WriteToTFRecord`
fed by the same checked rows and the same threaded image reads, each run in a fresh process (alternating, twice):
images/s, peak RSS, and the stock/ours ratio.
"""

from __future__ import annotations

import argparse
import csv
import logging
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import apache_beam as beam

from components.beam_runner import pipeline_options, runner_for
from components.convert import schema
from components.convert.csv_scan import KNOWN_SPLITS, scan_csv
from components.convert.pipeline import convert, shard_counts
from components.convert.transforms import CheckRows, Deduplicate
from components.convert.writer import IMAGE_THREADS, ShardFile, read_image
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
    labels = {label: i for i, label in enumerate(sorted({row["label"] for row in rows}))}
    start = time.perf_counter()
    for row in rows:
        ShardFile.encode(read_image(row, labels, record_format).example, gzip)
    return len(rows) / (time.perf_counter() - start)


class ReadImages(beam.DoFn):
    """A batch of rows -> (split, serialized Example) per good image, read in IMAGE_THREADS threads as our shard
    writer reads them: the stock writer gets the same parallel reads, only the writing differs."""

    def __init__(self, labels: list[str], record_format: str):
        self.label_index, self.record_format = {label: i for i, label in enumerate(labels)}, record_format

    def setup(self):
        self.pool = ThreadPoolExecutor(IMAGE_THREADS)

    def process(self, rows):
        for image in self.pool.map(lambda row: read_image(row, self.label_index, self.record_format), rows):
            if not image.reason:
                yield image.row["split"], image.example


def stock_convert(csv_path: str, out_dir: str, record_format: str) -> None:
    """The conversion with Beam's WriteToTFRecord per split (same shard names and counts), no staging."""
    scan = scan_csv(csv_path)
    shards = shard_counts(scan, 0)
    suffix = ".tfrecord.gz" if record_format == "tfrecorder" else ".tfrecord"
    pipeline = beam.Pipeline(runner=runner_for("DirectRunner"), options=pipeline_options("DirectRunner", [], 1))
    rows = (pipeline | beam.io.ReadFromText(csv_path, skip_header_lines=1) | CheckRows(scan.columns, scan.width)).good
    records = ((rows | Deduplicate()).good
               | beam.BatchElements(min_batch_size=4 * IMAGE_THREADS, max_batch_size=4 * IMAGE_THREADS)
               | beam.ParDo(ReadImages(scan.labels, record_format)))
    for split in KNOWN_SPLITS:
        _ = (records
             | f"Only{split}" >> beam.Filter(lambda record, s=split: record[0] == s)
             | f"Example{split}" >> beam.Map(lambda record: record[1])
             | f"Write{split}" >> beam.io.WriteToTFRecord(
                 os.path.join(out_dir, schema.SPLIT_PREFIX[split]), file_name_suffix=suffix,
                 num_shards=shards[split], shard_name_template="-SSSSS-of-NNNNN"))
    pipeline.run().wait_until_finish()


def timed_writer(writer: str, csv_path: str, out_dir: str, record_format: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one conversion, in the fresh process this runs in."""
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    if writer == "ours":
        convert(csv_path, out_dir, record_format=record_format)
    else:
        stock_convert(csv_path, out_dir, record_format)
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare_writers(csv_path: str, workdir: str, record_format: str, rows: int) -> None:
    seconds: dict[str, list[float]] = {"ours": [], "stock": []}
    peak: dict[str, float] = {"ours": 0.0, "stock": 0.0}
    for attempt in range(2):
        for writer in ("ours", "stock"):
            out_dir = os.path.join(workdir, f"{writer}-{record_format}-{attempt}")
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as process:
                taken, rss = process.submit(timed_writer, writer, csv_path, out_dir, record_format).result()
            seconds[writer].append(taken)
            peak[writer] = max(peak[writer], rss)
            files = sorted(n for n in os.listdir(out_dir) if ".tfrecord" in n)
            print(f"{writer:>5} ({record_format}, run {attempt + 1}): {rows / taken:7.1f} img/s, peak RSS "
                  f"{rss:6.0f} MiB, {folder_bytes(out_dir) / rows / 1024:.1f} KiB/image, {len(files)} files "
                  f"({files[0]} ...)", flush=True)
    ours, stock = min(seconds["ours"]), min(seconds["stock"])
    print(f"{rows} rows, {record_format}: stock WriteToTFRecord / our writer = {ours / stock:.2f}x the speed "
          f"(best of 2 each), peak RSS {peak['stock']:.0f} vs {peak['ours']:.0f} MiB; cores: {os.cpu_count()}; "
          f"load average: {os.getloadavg()[0]:.1f}")


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
    parser.add_argument("--writers", action="store_true", help="compare our shard writer with WriteToTFRecord")
    parser.add_argument("--format", default="jpeg", choices=schema.FORMATS, help="--writers' record format")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    workdir = args.workdir or tempfile.mkdtemp(prefix="catsdogs-bench-")
    images = os.path.join(workdir, "images")
    if not os.path.isdir(images):
        generate_sample(images, per_class=args.images // 2)
    csv_path = os.path.join(workdir, "images.csv")
    prepare_csv(images, csv_path)
    small_csv = every_nth_row(csv_path, os.path.join(workdir, "small.csv"), 4)
    if args.writers:
        compare_writers(csv_path, workdir, args.format, args.images)
        return
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
