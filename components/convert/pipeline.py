"""The Beam pipeline behind `catsdogs convert`: CSV rows -> checked images -> TFRecord shards per split.

    rows --ReadImages--> good ---ToExample--> Partition(split) --> WriteToTFRecord (train/validation/test)
                   \\--> bad ----------------------------------------> errors-*.csv

Bad rows (unreadable files, non-images, unknown split, empty label ...) go to errors-*.csv with a reason;
every good row is written. The run fails after writing the errors when more than --max-error-fraction of the
rows are bad. Runs on DirectRunner here and on Dataflow with `--runner DataflowRunner` plus Dataflow options.
"""

import csv
import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.pipeline import PipelineVisitor

from components import storage
from components.convert import schema
from components.convert.images import BadImage, to_rgb_jpeg, to_rgb_pixels
from components.errors import InputError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("split", "image_uri", "label")
KNOWN_SPLITS = ("TRAIN", "VALIDATION", "TEST")
ERROR_COLUMNS = "image_uri,label,split,reason"
COUNTER_NAMESPACE = "catsdogs.convert"
RECORDS_PER_SHARD = 1000
MULTI_PROCESS_ROWS = 5000


@dataclass
class ConversionSummary:
    rows: int = 0
    good: int = 0
    bad: int = 0
    duplicates: int = 0
    discarded: int = 0
    per_split: dict[str, int] = field(default_factory=dict)
    per_label: dict[str, int] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    format: str = "jpeg"


def _bad(row: dict, reason: str) -> dict:
    return {"image_uri": row.get("image_uri", ""), "label": row.get("label", ""),
            "split": row.get("split", ""), "reason": reason}


def read_csv_rows(csv_path: str) -> tuple[list[dict], list[dict], ConversionSummary]:
    """Parses and checks the CSV before any Beam work: (rows to convert, bad rows, counts so far).

    Structural problems (missing file, no header, missing columns, no rows) raise InputError; problems of one
    row (unknown split, empty label or URI, conflicting duplicate) make that row bad and name its line.
    """
    if not storage.exists(csv_path):
        raise InputError(f"CSV {csv_path} does not exist")
    lines = list(csv.reader(io.StringIO(storage.read_text(csv_path))))
    if not lines:
        raise InputError(f"CSV {csv_path} is empty: expected a header {','.join(REQUIRED_COLUMNS)} and rows")
    header = [name.strip().lower() for name in lines[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        looks_like_data = lines[0] and lines[0][0].strip().upper() in (*KNOWN_SPLITS, "DISCARD")
        hint = " (the first line looks like data: the CSV needs a header)" if looks_like_data else ""
        raise InputError(
            f"CSV {csv_path} line 1: missing column(s) {', '.join(missing)}{hint}; "
            f"header is {','.join(lines[0])!r}, expected at least {','.join(REQUIRED_COLUMNS)}"
        )
    if len(lines) == 1:
        raise InputError(f"CSV {csv_path} has a header but no rows")

    summary = ConversionSummary()
    good, bad, seen = [], [], {}
    for line_number, values in enumerate(lines[1:], start=2):
        if not any(v.strip() for v in values):
            continue
        summary.rows += 1
        record = dict(zip(header, values))
        row = {c: record.get(c, "").strip() for c in REQUIRED_COLUMNS}
        row["split"] = row["split"].upper()
        where = f"line {line_number}"
        if len(values) < len(header):
            bad.append(_bad(row, f"{where}: {len(values)} fields, header has {len(header)}"))
        elif row["split"] == "DISCARD":
            summary.discarded += 1
        elif row["split"] not in KNOWN_SPLITS:
            bad.append(_bad(row, f"{where}: unknown split {row['split']!r}, expected one of "
                                 f"{', '.join(KNOWN_SPLITS)} or DISCARD"))
        elif not row["image_uri"]:
            bad.append(_bad(row, f"{where}: empty image_uri"))
        elif not row["label"]:
            bad.append(_bad(row, f"{where}: empty label"))
        elif row["image_uri"] in seen:
            first_line, first = seen[row["image_uri"]]
            if first == row:
                summary.duplicates += 1
            else:
                bad.append(_bad(row, f"{where}: same image_uri as line {first_line} with another split or label"))
        else:
            seen[row["image_uri"]] = (line_number, row)
            good.append(row)
    return good, bad, summary


class EncodeImage(beam.DoFn):
    """Reads one row's image through Beam's FileSystems (local or gs://), checks it and encodes the record.

    Emits (split, serialized example), or a bad row with the reason on the "bad" output.
    """

    BAD = "bad"

    def __init__(self, labels: list[str], record_format: str):
        self.label_index = {label: i for i, label in enumerate(labels)}
        self.record_format = record_format

    def process(self, row: dict):
        try:
            with FileSystems.open(row["image_uri"]) as f:
                data = f.read()
        except Exception as e:  # noqa: BLE001 - any filesystem failure is this row's reason
            yield beam.pvalue.TaggedOutput(self.BAD, _bad(row, f"cannot read file: {type(e).__name__}: {e}"))
            return
        try:
            example = self._encode(data, row)
        except BadImage as e:
            yield beam.pvalue.TaggedOutput(self.BAD, _bad(row, str(e)))
            return
        except Exception as e:  # noqa: BLE001 - a decoder bug on one odd file must not stop the other rows
            log.exception("unexpected failure on %s", row["image_uri"])
            yield beam.pvalue.TaggedOutput(self.BAD, _bad(row, f"unexpected {type(e).__name__}: {e}"))
            return
        Metrics.counter(COUNTER_NAMESPACE, f"good/{row['split']}/{row['label']}").inc()
        yield row["split"], example

    def _encode(self, data: bytes, row: dict) -> bytes:
        index = self.label_index[row["label"]]
        if self.record_format == "tfrecorder":
            pixels, height, width = to_rgb_pixels(data)
            return schema.tfrecorder_example(pixels, height, width, row["image_uri"], index, row["split"])
        jpeg, height, width = to_rgb_jpeg(data)
        return schema.jpeg_example(jpeg, height, width, row["image_uri"], index, row["label"], row["split"])


class EncodeImages(beam.PTransform):
    """Rows -> {"good": (split, example), "bad": bad rows}."""

    def __init__(self, rows: list[dict], labels: list[str], record_format: str):
        super().__init__()
        self.rows, self.labels, self.record_format = rows, labels, record_format

    def expand(self, pipeline):
        return (
            pipeline
            | "Rows" >> beam.Create(self.rows, reshuffle=True)
            | "Encode" >> beam.ParDo(EncodeImage(self.labels, self.record_format)).with_outputs(EncodeImage.BAD, main="good")
        )


class WriteSplits(beam.PTransform):
    """(split, example) -> `<split>-SSSSS-of-NNNNN.tfrecord[.gz]` shards, one set per split."""

    def __init__(self, output_dir: str, shards_per_split: dict[str, int], compression: str):
        super().__init__()
        self.output_dir, self.shards_per_split, self.compression = output_dir, shards_per_split, compression

    def expand(self, examples):
        by_split = examples | "BySplit" >> beam.Partition(lambda keyed, _: KNOWN_SPLITS.index(keyed[0]), len(KNOWN_SPLITS))
        gzip = self.compression == "gzip"
        for split, keyed in zip(KNOWN_SPLITS, by_split):
            prefix = schema.SPLIT_PREFIX[split]
            _ = (
                keyed
                | f"{prefix.title()}Records" >> beam.Values()
                | f"Write{prefix.title()}" >> beam.io.WriteToTFRecord(
                    storage.join(self.output_dir, prefix),
                    file_name_suffix=".tfrecord.gz" if gzip else ".tfrecord",
                    num_shards=self.shards_per_split[split],
                    compression_type=CompressionTypes.GZIP if gzip else CompressionTypes.UNCOMPRESSED,
                )
            )
        return examples.pipeline


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
    Metrics.counter(COUNTER_NAMESPACE, "bad").inc()
    return row


def _remove_previous_outputs(output_dir: str) -> None:
    """Re-runs must not leave shards of an earlier run (with another shard count) beside the new ones."""
    patterns = [storage.join(output_dir, p) for p in ("*.tfrecord*", "errors-*.csv")]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        FileSystems.delete(stale)


def build_pipeline(pipeline: beam.Pipeline, rows: list[dict], bad_rows: list[dict], labels: list[str],
                   output_dir: str, num_shards: int, record_format: str = "jpeg", compression: str = "none") -> None:
    shards = {
        split: num_shards or max(1, math.ceil(sum(r["split"] == split for r in rows) / RECORDS_PER_SHARD))
        for split in KNOWN_SPLITS
    }
    images = pipeline | "EncodeImages" >> EncodeImages(rows, labels, record_format)
    _ = images.good | "WriteSplits" >> WriteSplits(output_dir, shards, compression)
    _ = (images[EncodeImage.BAD], pipeline | "CsvBadRows" >> beam.Create(bad_rows)) | "WriteErrors" >> WriteErrors(output_dir)


def dataflow_args(project: str, region: str, temp_location: str, sdk_container_image: str = "",
                  service_account: str = "", machine_type: str = "", max_workers: int = 0, job_name: str = "",
                  subnetwork: str = "", labels: dict[str, str] | None = None) -> list[str]:
    """Beam options for a Dataflow run; empty values are left to Dataflow's defaults."""
    missing = [n for n, v in (("project", project), ("region", region), ("temp_location", temp_location)) if not v]
    if missing:
        raise InputError(f"DataflowRunner needs {', '.join(missing)}")
    if not temp_location.startswith("gs://"):
        raise InputError(f"Dataflow's temp_location must be a gs:// path, got {temp_location!r}")
    options = {
        "project": project, "region": region, "temp_location": temp_location,
        "sdk_container_image": sdk_container_image, "service_account_email": service_account,
        "machine_type": machine_type, "max_num_workers": str(max_workers) if max_workers else "",
        "job_name": job_name, "subnetwork": subnetwork,
    }
    args = [f"--{name}={value}" for name, value in options.items() if value]
    return args + [f"--labels={key}={value}" for key, value in sorted((labels or {}).items())]


def _runner(name: str):
    """DirectRunner means Beam's local FnApiRunner: the switching DirectRunner first tries to download the
    Prism runner binary, which fails offline and ignores the direct_* options."""
    if name == "DirectRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return name


def pipeline_options(runner: str, pipeline_args: list[str], direct_workers: int, rows: int) -> PipelineOptions:
    """Beam options; direct_workers=0 picks the DirectRunner's processes: one below MULTI_PROCESS_ROWS rows
    (starting worker processes costs more than it saves there), else one per core."""
    options = PipelineOptions(pipeline_args)
    if direct_workers == 0:
        direct_workers = 1 if rows < MULTI_PROCESS_ROWS else os.cpu_count() or 1
    if runner == "DirectRunner" and direct_workers > 1:
        direct = options.view_as(DirectOptions)
        direct.direct_running_mode = "multi_processing"
        direct.direct_num_workers = direct_workers
    return options


def describe(pipeline: beam.Pipeline, options: PipelineOptions) -> str:
    """What a dry run prints: the options that differ from Beam's defaults and the pipeline's steps."""

    class Steps(PipelineVisitor):
        def __init__(self):
            self.lines = []

        def enter_composite_transform(self, node):
            depth = node.full_label.count("/")
            if node.full_label and depth < 2:
                self.lines.append("  " * (depth + 1) + node.full_label.rsplit("/", 1)[-1])

    steps = Steps()
    pipeline.visit(steps)
    chosen = options.get_all_options(drop_default=True, retain_unknown_options=True)
    return "\n".join(
        ["pipeline options:", *(f"  --{k}={v}" for k, v in sorted(chosen.items())), "steps:", *steps.lines]
    )


def convert(csv_path: str, output_dir: str, record_format: str = "jpeg", compression: str | None = None,
            num_shards: int = 0, max_error_fraction: float = 0.05, runner: str = "DirectRunner",
            pipeline_args: list[str] | None = None, direct_workers: int = 0,
            dry_run: bool = False) -> ConversionSummary:
    """Converts the CSV's images to TFRecords in output_dir and returns the counts (also in summary.json).

    record_format is "jpeg" (default) or "tfrecorder"; compression defaults to none for jpeg (JPEG bytes do not
    compress) and gzip for tfrecorder, as TFRecorder wrote. num_shards=0 picks one shard per 1000 records of
    each split. pipeline_args go to Beam as they are (e.g. Dataflow's --project, --region, --temp_location).
    direct_workers is the DirectRunner's process count (0: chosen by the row count). dry_run prints the options and
    steps and returns without reading an image or writing anything.
    """
    if record_format not in schema.FORMATS:
        raise InputError(f"--format must be one of {', '.join(schema.FORMATS)}, got {record_format!r}")
    compression = compression or ("gzip" if record_format == "tfrecorder" else "none")
    if compression not in ("gzip", "none"):
        raise InputError(f"--compression must be gzip or none, got {compression!r}")
    if not 0 <= max_error_fraction <= 1:
        raise InputError(f"--max-error-fraction must be between 0 and 1, got {max_error_fraction}")
    rows, bad_rows, summary = read_csv_rows(csv_path)
    summary.labels = sorted({r["label"] for r in rows})
    summary.format = record_format
    if not rows:
        raise InputError(f"CSV {csv_path}: no usable rows ({len(bad_rows)} bad); first problem: "
                         f"{bad_rows[0]['reason'] if bad_rows else 'all rows are DISCARD'}")

    options = pipeline_options(runner, pipeline_args or [], direct_workers, len(rows))
    # A dry run builds the graph on the local runner: Dataflow's option checks already call GCS.
    pipeline = beam.Pipeline(runner=_runner("DirectRunner" if dry_run else runner), options=options)
    build_pipeline(pipeline, rows, bad_rows, summary.labels, output_dir, num_shards, record_format, compression)
    if dry_run:
        print(f"dry run: would convert {len(rows)} rows of {csv_path} to {output_dir} "
              f"({record_format}, compression {compression}) with {runner}\n{describe(pipeline, options)}")
        return summary

    schema.write_labels(output_dir, summary.labels)
    _remove_previous_outputs(output_dir)
    log.info("converting %d rows from %s to %s (%s) with %s", len(rows), csv_path, output_dir, record_format, runner)
    if runner == "DataflowRunner":
        logging.getLogger("apache_beam").setLevel(logging.INFO)  # the job's id, URL and progress
    result = pipeline.run()
    result.wait_until_finish()
    _add_counts(summary, result)
    storage.write_text(storage.join(output_dir, schema.SUMMARY_FILE), json.dumps(asdict(summary), indent=1) + "\n")

    errors_path = storage.join(output_dir, "errors-00000-of-00001.csv")
    checked = summary.good + summary.bad
    if summary.bad:
        log.warning("%d of %d rows are bad; reasons in %s", summary.bad, checked, errors_path)
    if checked and summary.bad / checked > max_error_fraction:
        raise InputError(
            f"{summary.bad} of {checked} rows ({summary.bad / checked:.1%}) are bad, more than "
            f"--max-error-fraction {max_error_fraction:.1%}; reasons in {errors_path}"
        )
    return summary


def _add_counts(summary: ConversionSummary, result) -> None:
    for counter in result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]:
        name, value = counter.key.metric.name, counter.committed
        if name == "bad":
            summary.bad += value
        else:
            _, split, label = name.split("/", 2)
            summary.good += value
            summary.per_split[split] = summary.per_split.get(split, 0) + value
            summary.per_label[label] = summary.per_label.get(label, 0) + value
