"""The Beam pipeline behind `catsdogs convert`: CSV -> checked, de-duplicated rows -> TFRecord shards per split.

    ReadFromText(csv) --CheckRows--> rows --Deduplicate--> unique rows --WriteShards--> <split>-SSSSS-of-NNNNN
                             \\--> bad          \\--> bad (conflicts)        \\--> bad (unreadable images)
                              bad + bad + bad ------------------------------------------> errors-*.csv

The CSV is read inside the pipeline (Dataflow workers read it from gs:), so neither the launcher's memory nor
the job graph grows with the number of rows. A streaming pre-pass in the launcher (`scan_csv`) keeps only the
header, the label set and per-split counts: the label vocabulary and shard counts are fixed before the job is
built, structural problems are refused before anything is written; it takes ~1 s per 100k rows here and its
memory does not grow with them (a side input would need the labels before the shard writers start anyway).
Images are read, checked and encoded inside the shard writer, so no PCollection ever holds image bytes (a runner
buffers PCollections between stages: the local FnApiRunner in memory).

Bad rows (unreadable files, non-images, unknown split, empty label, conflicting duplicates ...) go to errors-*.csv
with a reason; every good row is written. The run fails when more than --max-error-fraction of the rows are bad.
Output is staged beside --output-dir and moved into place only on success, one run per folder at a time
(components/outputs.py). A run whose good rows leave a label out of TRAIN or out of a held-out split fails.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from components import outputs, storage
from components.beam_runner import describe, pipeline_options, runner_for
from components.contracts import CSV_COLUMNS, CSV_SPLITS, DISCARD, MAX_FILE_BYTES, SPLITS, TRAIN
from components.convert import output, schema
from components.convert.images import to_rgb_jpeg, to_rgb_pixels
from components.errors import InputError
from components.image_files import BadImage

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = CSV_COLUMNS
KNOWN_SPLITS = SPLITS
ERROR_COLUMNS = "image_uri,label,split,reason"
COUNTER_NAMESPACE = "catsdogs.convert"
RECORDS_PER_SHARD = 1000
# Threads per shard writer: reads (GCS latency) and decodes overlap, and Pillow and zlib release the GIL. Locally
# on 2 busy cores 8 threads vs 1: 1522 vs 1435 img/s (jpeg, 2000 images); TFRecorder's format is bound by deflate
# (~15-30 ms per record), which only threads spread over the cores.
IMAGE_THREADS = 8


@dataclass
class ConversionSummary:
    rows: int = 0
    good: int = 0
    bad: int = 0
    duplicates: int = 0
    discarded: int = 0
    per_split: dict[str, int] = field(default_factory=dict)
    per_label: dict[str, int] = field(default_factory=dict)
    per_split_label: dict[str, dict[str, int]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    format: str = "jpeg"


def _bad(row: dict, reason: str) -> dict:
    return {"image_uri": row.get("image_uri", ""), "label": row.get("label", ""),
            "split": row.get("split", ""), "reason": reason}


def normalise_uri(uri: str) -> str:
    """One spelling per file: `a//b`, `./a/b`, `a/./b` and the absolute path are one local file; `//` and `/./`
    are collapsed in gs:// (and other scheme://) names too (GCS could hold both `a//b` and `a/b`; no image set
    does). Relative local paths are resolved against the working folder, as reading them would."""
    scheme, sep, rest = uri.partition("://")
    if sep:
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.abspath(uri)


def check_row(values: list[str], columns: dict[str, int], width: int,
              normalise: bool = True) -> tuple[dict, str | None]:
    """(row, problem): problem is None for a row to convert, DISCARD for a DISCARD row, else the reason."""
    row = {c: values[i].strip() if i < len(values) else "" for c, i in columns.items()}
    row["split"] = row["split"].upper()
    if len(values) < width:
        return row, f"{len(values)} fields, header has {width}"
    if row["split"] == DISCARD:
        return row, DISCARD
    if row["split"] not in KNOWN_SPLITS:
        return row, f"unknown split {row['split']!r}, expected one of {', '.join(CSV_SPLITS)}"
    if not row["image_uri"]:
        return row, "empty image_uri"
    if not row["label"]:
        return row, "empty label"
    if normalise:
        row["image_uri"] = normalise_uri(row["image_uri"])
    return row, None


@dataclass
class CsvScan:
    """What the launcher keeps of the CSV: its header and counts, never its rows."""

    columns: dict[str, int]
    width: int
    rows: int = 0
    per_split: dict[str, int] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    pairs: set[tuple[str, str]] = field(default_factory=set)  # (split, label) of the rows to convert
    first_problem: str = ""


def _text_lines(csv_path: str):
    """The CSV's lines as text, decoded one line at a time so an encoding error names its line. utf-8-sig:
    Excel's "CSV UTF-8" starts with a byte-order mark, which would otherwise end up in the name "split"."""
    with FileSystems.open(csv_path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        for number, line in enumerate(raw, start=1):
            try:
                yield line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"CSV {csv_path} line {number} is not UTF-8 text ({e.reason} at byte {e.start} "
                                 f"of the line); save it as UTF-8 (Excel: CSV UTF-8)") from None


def scan_csv(csv_path: str) -> CsvScan:
    """A streaming pass over the CSV that refuses structural problems (missing file, not UTF-8, no header,
    missing columns, no usable rows, a quoted field spanning lines) before any Beam work."""
    if not storage.is_gcs(csv_path) and os.path.isdir(csv_path):
        raise InputError(f"CSV {csv_path} is a folder, expected a CSV file")
    if not FileSystems.exists(csv_path):
        raise InputError(f"CSV {csv_path} does not exist")
    labels: set[str] = set()
    reader = None
    try:
        reader = csv.reader(_text_lines(csv_path))
        header = next(reader, None)
        if header is None:
            raise InputError(f"CSV {csv_path} is empty: expected a header {','.join(REQUIRED_COLUMNS)} and rows")
        names = [name.strip().lower() for name in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            looks_like_data = header and header[0].strip().upper() in CSV_SPLITS
            hint = " (the first line looks like data: the CSV needs a header)" if looks_like_data else ""
            raise InputError(
                f"CSV {csv_path} line 1: missing column(s) {', '.join(missing)}{hint}; "
                f"header is {','.join(header)!r}, expected at least {','.join(REQUIRED_COLUMNS)}")
        scan = CsvScan(columns={c: names.index(c) for c in REQUIRED_COLUMNS}, width=len(header))
        last_line = reader.line_num
        for values in reader:
            if reader.line_num != last_line + 1:
                raise InputError(f"CSV {csv_path} line {last_line + 1}: a quoted field spans lines; "
                                 f"convert reads one row per line (remove the line break from the field)")
            last_line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            scan.rows += 1
            row, problem = check_row(values, scan.columns, scan.width, normalise=False)
            if problem is None:
                labels.add(row["label"])
                scan.pairs.add((row["split"], row["label"]))
                scan.per_split[row["split"]] = scan.per_split.get(row["split"], 0) + 1
            elif problem != DISCARD and not scan.first_problem:
                scan.first_problem = f"line {reader.line_num}: {problem}"
    except csv.Error as e:
        raise InputError(f"CSV {csv_path} line {reader.line_num}: {e}") from e
    if scan.rows == 0:
        raise InputError(f"CSV {csv_path} has a header but no rows")
    if not scan.per_split:
        first = scan.first_problem or "all rows are DISCARD"
        raise InputError(f"CSV {csv_path}: no usable rows; first problem: {first}")
    scan.labels = sorted(labels)
    if len(scan.labels) < 2:
        raise InputError(f"CSV {csv_path}: only the label {scan.labels} among the rows to convert; "
                         f"a classifier needs at least two")
    return scan


def _count(name: str) -> None:
    Metrics.counter(COUNTER_NAMESPACE, name).inc()


class CheckRow(beam.DoFn):
    """One CSV line -> a row dict, or a bad row with the reason on the "bad" output. DISCARD rows are counted."""

    BAD = "bad"

    def __init__(self, columns: dict[str, int], width: int):
        self.columns, self.width = columns, width

    def process(self, line: str):
        if not line.strip():
            return
        values = next(csv.reader([line]), [])
        row, problem = check_row(values, self.columns, self.width)
        if problem == DISCARD:
            _count("discarded")
        elif problem:
            yield beam.pvalue.TaggedOutput(self.BAD, _bad(row, problem))
        else:
            yield row


class CheckRows(beam.PTransform):
    """PCollection of CSV lines (header excluded) -> outputs "good" (row dicts) and "bad" (rows with a reason)."""

    def __init__(self, columns: dict[str, int], width: int):
        super().__init__()
        self.columns, self.width = columns, width

    def expand(self, lines):
        return lines | "Check" >> beam.ParDo(CheckRow(self.columns, self.width)).with_outputs(CheckRow.BAD,
                                                                                              main="good")


def _resolve(keyed):
    """All rows of one (normalised) image_uri -> the row once, or every row as bad when they disagree."""
    uri, rows = keyed
    rows = list(rows)
    distinct = {(r["split"], r["label"]) for r in rows}
    if len(distinct) == 1:
        Metrics.counter(COUNTER_NAMESPACE, "duplicates").inc(len(rows) - 1)
        yield rows[0]
        return
    seen = ", ".join(f"{split}/{label}" for split, label in sorted(distinct))
    for row in rows:
        yield beam.pvalue.TaggedOutput(CheckRow.BAD, _bad(row, f"the same image is listed {len(rows)} times with "
                                                               f"different split or label ({seen})"))


class Deduplicate(beam.PTransform):
    """Rows -> "good": one row per image (by normalised URI); "bad": every row of an image listed with
    conflicting splits or labels (which one is right cannot be known). Exact repeats are counted."""

    def expand(self, rows):
        return (
            rows
            | "ByUri" >> beam.Map(lambda row: (row["image_uri"], row))
            | "GroupByUri" >> beam.GroupByKey()
            | "Resolve" >> beam.FlatMap(_resolve).with_outputs(CheckRow.BAD, main="good")
        )


def shard_of(uri: str, shards: int) -> int:
    """A stable shard for an image: the same CSV gives the same shards on every runner."""
    return int.from_bytes(hashlib.blake2b(uri.encode("utf-8"), digest_size=8).digest(), "big") % shards


def shard_name(split: str, index: int, shards: int, gzip: bool) -> str:
    return f"{schema.SPLIT_PREFIX[split]}-{index:05d}-of-{shards:05d}.tfrecord" + (".gz" if gzip else "")


class ShardFile:
    """A TFRecord file written record by record, optionally as gzip. Records are framed and deflated by
    `encode` in the image threads (zlib releases the GIL): each is an independent deflate chunk ending in a
    sync flush, and the chunks concatenate into one gzip member (pigz's method). Deflating one TFRecorder
    record (360 KB of base64 pixels) takes ~14 ms, so a single compressing thread capped that format at ~70 img/s.
    """

    GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, unknown OS
    FINAL_BLOCK = b"\x03\x00"  # an empty final fixed-Huffman block ends the deflate stream

    def __init__(self, path: str, gzip: bool):
        self.gzip, self.crc, self.size = gzip, 0, 0
        self.file = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
        if gzip:
            self.file.write(self.GZIP_HEADER)

    @staticmethod
    def encode(record: bytes, gzip: bool) -> tuple[bytes, bytes]:
        """(the TFRecord-framed record, what goes into the file)."""
        framed = io.BytesIO()
        _TFRecordUtil.write_record(framed, record)  # length, masked CRC32C of it, data, masked CRC32C of data
        framed = framed.getvalue()
        if not gzip:
            return framed, framed
        deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)  # level 6: what Beam's gzip writer uses
        return framed, deflate.compress(framed) + deflate.flush(zlib.Z_SYNC_FLUSH)

    def write(self, encoded: tuple[bytes, bytes]) -> None:
        framed, data = encoded
        if self.gzip:
            self.crc, self.size = zlib.crc32(framed, self.crc), self.size + len(framed)
        self.file.write(data)

    def close(self) -> None:
        if self.gzip:
            self.file.write(self.FINAL_BLOCK + struct.pack("<II", self.crc, self.size & 0xFFFFFFFF))
        self.file.close()


class WriteShard(beam.DoFn):
    """((split, shard index), rows) -> one TFRecord shard file. Reads, checks and encodes each row's image
    (threads overlap reads and decodes) and writes the record at once: image bytes never enter a PCollection.
    Emits the shard's path, and each row whose image cannot be used on the "bad" output."""

    BAD = "bad"

    def __init__(self, folder: str, shards: dict[str, int], labels: list[str], record_format: str, gzip: bool,
                 max_file_bytes: int = MAX_FILE_BYTES):
        self.folder, self.shards, self.record_format, self.gzip = folder, shards, record_format, gzip
        self.label_index = {label: i for i, label in enumerate(labels)}
        self.max_file_bytes = max_file_bytes

    def setup(self):
        self.pool = ThreadPoolExecutor(IMAGE_THREADS)

    def teardown(self):
        self.pool.shutdown()

    def process(self, keyed):
        (split, index), rows = keyed
        path = storage.join(self.folder, shard_name(split, index, self.shards[split], self.gzip))
        shard = ShardFile(path, self.gzip)
        try:
            for row, encoded, reason in _bounded_map(self.pool, self._encode, rows, 4 * IMAGE_THREADS):
                if reason:
                    yield beam.pvalue.TaggedOutput(self.BAD, _bad(row, reason))
                    continue
                shard.write(encoded)
                _count(f"good/{row['split']}/{row['label']}")
        finally:
            shard.close()
        yield path

    def _encode(self, row: dict) -> tuple[dict, tuple[bytes, bytes] | None, str | None]:
        try:
            data = storage.read_at_most(row["image_uri"], self.max_file_bytes)
        except storage.FileTooLarge as e:
            return row, None, str(e)
        except Exception as e:  # noqa: BLE001 - any filesystem failure is this row's reason
            return row, None, f"cannot read file: {type(e).__name__}: {e}"
        try:
            index = self.label_index[row["label"]]
            if self.record_format == "tfrecorder":
                pixels, height, width = to_rgb_pixels(data)
                example = schema.tfrecorder_example(pixels, height, width, row["image_uri"], index, row["split"])
            else:
                jpeg, height, width = to_rgb_jpeg(data)
                example = schema.jpeg_example(jpeg, height, width, row["image_uri"], index, row["label"], row["split"])
            return row, ShardFile.encode(example, self.gzip), None
        except BadImage as e:
            return row, None, str(e)
        except Exception as e:  # a decoder bug on one odd file must not stop the other rows
            log.exception("unexpected failure on %s", row["image_uri"])
            return row, None, f"unexpected {type(e).__name__}: {e}"


def _bounded_map(pool: ThreadPoolExecutor, fn, items, window: int):
    """pool.map in input order with at most `window` results in flight (memory stays bounded)."""
    pending = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


class WriteShards(beam.PTransform):
    """Unique rows -> `<split>-SSSSS-of-NNNNN.tfrecord[.gz]` in `folder` ("written": shard paths; "bad": rows
    whose image cannot be used). Shards no row fell into are created empty by `finish_shards`."""

    def __init__(self, folder: str, shards: dict[str, int], labels: list[str], record_format: str, gzip: bool,
                 max_file_bytes: int = MAX_FILE_BYTES):
        super().__init__()
        self.folder, self.shards, self.labels = folder, shards, labels
        self.record_format, self.gzip, self.max_file_bytes = record_format, gzip, max_file_bytes

    def expand(self, rows):
        shards = self.shards
        return (
            rows
            | "ByShard" >> beam.Map(lambda row: ((row["split"], shard_of(row["image_uri"], shards[row["split"]])), row))
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(WriteShard(self.folder, shards, self.labels, self.record_format, self.gzip,
                                               self.max_file_bytes))
            .with_outputs(WriteShard.BAD, main="written")
        )


def finish_shards(folder: str, shards: dict[str, int], gzip: bool) -> None:
    """Creates the empty shards (a valid, empty TFRecord file), so every split has its full set of names."""
    for split, count in shards.items():
        for index in range(count):
            path = storage.join(folder, shard_name(split, index, count, gzip))
            if not FileSystems.exists(path):
                ShardFile(path, gzip).close()


class WriteErrors(beam.PTransform):
    """Bad rows -> errors-00000-of-00001.csv (image_uri,label,split,reason), counted."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, bad_rows):
        return (
            bad_rows
            | "AllBad" >> beam.Flatten()
            | "CountBad" >> beam.Map(_count_bad)
            | "ErrorLines" >> beam.Map(_error_line)
            | "WriteErrors" >> beam.io.WriteToText(
                storage.join(self.output_dir, "errors"), file_name_suffix=".csv", num_shards=1, header=ERROR_COLUMNS
            )
        )


def _error_line(row: dict) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([row[c] for c in ERROR_COLUMNS.split(",")])
    return buffer.getvalue()


def _count_bad(row: dict) -> dict:
    _count("bad")
    return row


def shard_counts(scan: CsvScan, num_shards: int) -> dict[str, int]:
    return {split: num_shards or max(1, math.ceil(scan.per_split.get(split, 0) / RECORDS_PER_SHARD))
            for split in KNOWN_SPLITS}


def build_pipeline(pipeline: beam.Pipeline, csv_path: str, scan: CsvScan, folder: str, num_shards: int,
                   record_format: str = "jpeg", compression: str = "none",
                   max_file_bytes: int = MAX_FILE_BYTES, validate: bool = True) -> None:
    """The whole conversion as one graph whose size does not depend on the CSV's length. validate=False: the
    CSV is not looked up while building (a dry run)."""
    lines = pipeline | "ReadCsv" >> beam.io.ReadFromText(csv_path, skip_header_lines=1, validate=validate)
    checked = lines | "CheckRows" >> CheckRows(scan.columns, scan.width)
    unique = checked.good | "Deduplicate" >> Deduplicate()
    written = unique.good | "WriteShards" >> WriteShards(
        folder, shard_counts(scan, num_shards), scan.labels, record_format, compression == "gzip", max_file_bytes)
    _ = (checked.bad, unique[CheckRow.BAD], written[WriteShard.BAD]) | "WriteErrors" >> WriteErrors(folder)


def _check_arguments(record_format: str, compression: str, num_shards: int, max_error_fraction: float,
                     max_file_bytes: int = MAX_FILE_BYTES) -> None:
    if record_format not in schema.FORMATS:
        raise InputError(f"--format must be one of {', '.join(schema.FORMATS)}, got {record_format!r}")
    if compression not in ("gzip", "none"):
        raise InputError(f"--compression must be gzip or none, got {compression!r}")
    if num_shards < 0:
        raise InputError(f"--num-shards must be 0 (automatic) or more, got {num_shards}")
    if not 0 <= max_error_fraction <= 1:
        raise InputError(f"--max-error-fraction must be between 0 and 1, got {max_error_fraction}")
    if max_file_bytes < 1:
        raise InputError(f"--max-file-bytes must be at least 1, got {max_file_bytes}")


def convert(csv_path: str, output_dir: str, record_format: str = "jpeg", compression: str | None = None,
            num_shards: int = 0, max_error_fraction: float = 0.05, runner: str = "DirectRunner",
            pipeline_args: list[str] | None = None, direct_workers: int = 1,
            dry_run: bool = False, max_file_bytes: int = MAX_FILE_BYTES) -> ConversionSummary:
    """Converts the CSV's images to TFRecords in output_dir and returns the counts (also in summary.json).

    record_format is "jpeg" (default) or "tfrecorder"; compression defaults to none for jpeg (JPEG bytes do not
    compress) and gzip for tfrecorder, as TFRecorder wrote. num_shards=0 picks one shard per 1000 records of
    each split. pipeline_args go to Beam as they are (e.g. Dataflow's --project, --region, --temp_location).
    direct_workers is the local runner's process count (1: one process). dry_run prints the options, steps and
    job-graph size and returns without reading an image or writing anything. A file over max_file_bytes is a
    bad row.
    A failed run leaves output_dir as it was; a successful one replaces only the files an earlier convert wrote.
    One run writes to an output folder at a time (components/outputs.py).
    """
    compression = compression or ("gzip" if record_format == "tfrecorder" else "none")
    _check_arguments(record_format, compression, num_shards, max_error_fraction, max_file_bytes)
    options = pipeline_options(runner, pipeline_args or [], direct_workers)
    target = outputs.resolve(output_dir)  # symlinks followed: staged on the target's filesystem
    # A dry run needs no credentials: it checks a gs:// output only when the real run starts.
    if not (dry_run and storage.is_gcs(output_dir)):
        outputs.check_output_dir(target, output.KIND)
    if dry_run and storage.is_gcs(csv_path):  # describes the job without reading the cloud (no credentials)
        scan, rows = CsvScan(columns={c: i for i, c in enumerate(CSV_COLUMNS)}, width=len(CSV_COLUMNS)), "the"
    else:
        scan = scan_csv(csv_path)
        rows = str(scan.rows)
    summary = ConversionSummary(rows=scan.rows, labels=scan.labels, format=record_format)

    if dry_run:
        # A dry run builds the graph on the local runner: Dataflow's option checks already call GCS.
        pipeline = beam.Pipeline(runner=runner_for("DirectRunner"), options=options)
        build_pipeline(pipeline, csv_path, scan, storage.join(output_dir, "staging"), num_shards, record_format,
                       compression, max_file_bytes, validate=False)
        print(f"dry run: would convert {rows} rows of {csv_path} to {output_dir} "
              f"({record_format}, compression {compression}) with {runner}\n{describe(pipeline, options)}")
        return summary

    with outputs.locked(target, output.KIND):
        previous = outputs.check_output_dir(target, output.KIND)  # again: no other run can change it now
        outputs.clean_leftovers(target)
        staging = outputs.new_staging_dir(target, output.KIND)
        try:
            _run(csv_path, staging, scan, summary, options, runner, num_shards, record_format, compression,
                 max_file_bytes)
        except BaseException:
            outputs.discard(staging, output.KIND)
            raise
        checked = summary.good + summary.bad
        problem = ""
        if summary.good == 0 or summary.bad / max(checked, 1) > max_error_fraction:
            problem = "no image could be converted" if summary.good == 0 else (
                f"{summary.bad} of {checked} rows ({summary.bad / checked:.1%}) are bad, more than "
                f"--max-error-fraction {max_error_fraction:.1%}")
        problem = problem or missing_labels(summary, scan.pairs)
        if problem:
            outputs.discard(staging, output.KIND, keep=(output.ERRORS_FILE, schema.SUMMARY_FILE))
            raise InputError(f"{problem}; {output_dir} is left as it was; reasons in "
                             f"{storage.join(staging, output.ERRORS_FILE)}")
        outputs.commit(staging, target, previous, output.KIND)
    if summary.bad:
        log.warning("%d of %d rows are bad; reasons in %s", summary.bad, checked,
                    storage.join(output_dir, output.ERRORS_FILE))
    return summary


def missing_labels(summary: ConversionSummary, listed: set[tuple[str, str]]) -> str:
    """Why the converted images cannot train and score a classifier, once the bad rows are gone: fewer than two
    labels in TRAIN, or a (split, label) the CSV has rows for left without one image (a model that never saw
    the label, or a held-out score that says nothing about it). listed: the CSV's (split, label) pairs.
    Empty when there is no such problem."""
    def shown(split: str) -> str:
        counts = summary.per_split_label.get(split, {})
        return ", ".join(f"{label} {counts.get(label, 0)}" for label in summary.labels)

    trained = [label for label, count in summary.per_split_label.get(TRAIN, {}).items() if count]
    if len(trained) < 2:
        return (f"after removing the bad rows, TRAIN has images of {len(trained)} of the {len(summary.labels)} "
                f"labels ({shown(TRAIN)}): a classifier needs at least two")
    for split in KNOWN_SPLITS:
        lost = sorted(label for s, label in listed if s == split and not summary.per_split_label.get(s, {}).get(label))
        if lost:
            role = "the model would never see" if split == TRAIN else "its score would say nothing about"
            return (f"after removing the bad rows, {split} has no image of {', '.join(lost)} ({shown(split)}): "
                    f"{role} {'it' if len(lost) == 1 else 'them'}")
    return ""


def _run(csv_path: str, staging: str, scan: CsvScan, summary: ConversionSummary, options: PipelineOptions,
         runner: str, num_shards: int, record_format: str, compression: str, max_file_bytes: int) -> None:
    pipeline = beam.Pipeline(runner=runner_for(runner), options=options)
    build_pipeline(pipeline, csv_path, scan, staging, num_shards, record_format, compression, max_file_bytes)
    schema.write_labels(staging, summary.labels)
    log.info("converting %d rows from %s (%s) with %s, staging in %s", scan.rows, csv_path, record_format, runner,
             staging)
    if runner == "DataflowRunner":
        logging.getLogger("apache_beam").setLevel(logging.INFO)  # the job's id, URL and progress
    result = pipeline.run()
    result.wait_until_finish()
    finish_shards(staging, shard_counts(scan, num_shards), compression == "gzip")
    errors_path = storage.join(staging, output.ERRORS_FILE)
    if not FileSystems.exists(errors_path):
        storage.write_text(errors_path, ERROR_COLUMNS + "\n")
    _add_counts(summary, result)
    storage.write_text(storage.join(staging, schema.SUMMARY_FILE), json.dumps(asdict(summary), indent=1) + "\n")


def _add_counts(summary: ConversionSummary, result) -> None:
    for counter in result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]:
        name, value = counter.key.metric.name, counter.committed
        if name == "bad":
            summary.bad += value
        elif name in ("duplicates", "discarded"):
            setattr(summary, name, getattr(summary, name) + value)
        else:
            _, split, label = name.split("/", 2)
            summary.good += value
            summary.per_split[split] = summary.per_split.get(split, 0) + value
            summary.per_label[label] = summary.per_label.get(label, 0) + value
            by_label = summary.per_split_label.setdefault(split, {})
            by_label[label] = by_label.get(label, 0) + value
