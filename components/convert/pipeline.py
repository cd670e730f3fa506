"""The Beam pipeline behind `catsdogs convert`: CSV -> checked, de-duplicated rows -> TFRecord shards per split.

    ReadFromText(csv) --CheckRows--> rows --Deduplicate--> unique rows --WriteShards--> <split>-SSSSS-of-NNNNN
                             \\--> bad          \\--> bad (conflicts)        \\--> bad (unreadable images)
                              bad + bad + bad ------------------------------------------> errors-*.csv
                                                       WriteShards' facts of each image --> facts-*.csv

The CSV is read inside the pipeline (Dataflow workers read it from gs:), so neither the launcher's memory nor
the job graph grows with the number of rows. A streaming pre-pass in the launcher (csv_scan.py) fixes the label
vocabulary and shard counts before the job is built and refuses structural problems before anything is written.
Images are read, checked and encoded inside the shard writer (writer.py), so no PCollection ever holds image bytes;
it also writes each image's validation facts (components/image_facts.py), so `catsdogs validate --facts` after
conversion reads no image again.

Bad rows (unreadable files, non-images, unknown split, empty label, conflicting duplicates ...) go to errors-*.csv
with a reason; every good row is written. The run fails when more than --max-error-fraction of the rows are bad.
Output is staged beside --output-dir and moved into place only on success, one run per folder at a time
(components/outputs.py). A run whose good rows leave a label out of TRAIN or out of a held-out split fails.

Modules: csv_scan (the pre-pass and the row check), transforms (rows), writer (shards); this one puts them
together, runs the job and keeps the output folder's transaction.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from components import outputs, storage
from components.beam_runner import describe, pipeline_options, runner_for
from components.contracts import CSV_COLUMNS, MAX_FILE_BYTES, TRAIN
from components.convert import output, schema, transforms
from components.convert.csv_scan import KNOWN_SPLITS, CsvScan, scan_csv
from components.convert.schema import shard_of
from components.convert.transforms import BAD, COUNTER_NAMESPACE, ERROR_COLUMNS, CheckRows, Deduplicate, WriteErrors
from components.convert.writer import WriteShards, finish_shards
from components.errors import InputError

__all__ = ["CheckRows", "ConversionSummary", "Deduplicate", "WriteShards", "build_pipeline", "convert",
           "missing_labels", "shard_of"]  # the transforms and shard_of: tests build them from here

log = logging.getLogger(__name__)

RECORDS_PER_SHARD = 1000


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


def shard_counts(scan: CsvScan, num_shards: int) -> dict[str, int]:
    return {split: num_shards or max(1, math.ceil(scan.per_split.get(split, 0) / RECORDS_PER_SHARD))
            for split in KNOWN_SPLITS}


def build_pipeline(pipeline: beam.Pipeline, csv_path: str, scan: CsvScan, folder: str, num_shards: int,
                   record_format: str = "jpeg", compression: str = "none",
                   max_file_bytes: int = MAX_FILE_BYTES, validate: bool = True, facts: bool = False) -> None:
    """The whole conversion as one graph whose size does not depend on the CSV's length. validate=False: the
    CSV is not looked up while building (a dry run). facts: also write facts-*.csv (validation's image facts)."""
    lines = pipeline | "ReadCsv" >> beam.io.ReadFromText(csv_path, skip_header_lines=1, validate=validate)
    checked = lines | "CheckRows" >> CheckRows(scan.columns, scan.width)
    unique = checked.good | "Deduplicate" >> Deduplicate()
    written = unique.good | "WriteShards" >> WriteShards(
        folder, shard_counts(scan, num_shards), scan.labels, record_format, compression == "gzip", max_file_bytes,
        facts)
    _ = (checked.bad, unique[BAD], written[BAD]) | "WriteErrors" >> WriteErrors(folder)
    if facts:
        _ = written[transforms.FACTS] | "WriteFacts" >> transforms.WriteFacts(folder)


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
            dry_run: bool = False, max_file_bytes: int = MAX_FILE_BYTES, facts: bool = False) -> ConversionSummary:
    """Converts the CSV's images to TFRecords in output_dir and returns the counts (also in summary.json).

    record_format is "jpeg" (default) or "tfrecorder"; compression defaults to none for jpeg (JPEG bytes do not
    compress) and gzip for tfrecorder, as TFRecorder wrote. num_shards=0 picks one shard per 1000 records of
    each split. pipeline_args go to Beam as they are (e.g. Dataflow's --project, --region, --temp_location).
    direct_workers is the local runner's process count (1: one process). dry_run prints the options, steps and
    job-graph size and returns without reading an image or writing anything. A file over max_file_bytes is a
    bad row. facts writes facts-*.csv, each image's validation facts (`catsdogs validate --facts` reads them
    instead of the images); they cost ~1.6 ms of CPU per image (pHash of a draft decode, SHA-256).
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
                       compression, max_file_bytes, validate=False, facts=facts)
        print(f"dry run: would convert {rows} rows of {csv_path} to {output_dir} "
              f"({record_format}, compression {compression}) with {runner}\n{describe(pipeline, options)}")
        return summary

    with outputs.locked(target, output.KIND):
        previous = outputs.check_output_dir(target, output.KIND)  # again: no other run can change it now
        outputs.clean_leftovers(target)
        staging = outputs.new_staging_dir(target, output.KIND)
        try:
            _run(csv_path, staging, scan, summary, options, runner, num_shards, record_format, compression,
                 max_file_bytes, facts)
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
         runner: str, num_shards: int, record_format: str, compression: str, max_file_bytes: int,
         facts: bool = False) -> None:
    pipeline = beam.Pipeline(runner=runner_for(runner), options=options)
    build_pipeline(pipeline, csv_path, scan, staging, num_shards, record_format, compression, max_file_bytes,
                   facts=facts)
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
