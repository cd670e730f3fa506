"""The row-level Beam transforms of `catsdogs convert`: check CSV lines, drop repeated images, write the bad rows.

A row is a dict of the CSV's columns (split, image_uri, label; image_uri normalised); a bad row adds "reason".
Every transform sends bad rows to its "bad" output, never drops them silently, and counts what it sees under
COUNTER_NAMESPACE (the launcher reads the counts back into summary.json).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.metrics.metric import Metrics

from components import storage
from components.contracts import DISCARD
from components.convert.csv_scan import check_row

ERROR_COLUMNS = "image_uri,label,split,reason"
COUNTER_NAMESPACE = "catsdogs.convert"
BAD = "bad"  # the tag of every transform's output of bad rows
FACTS = "facts"  # the shard writer's output of facts lines (components/image_facts.py), for `validate --facts`
Row = dict[str, str]


def bad_row(row: dict, reason: str) -> dict:
    return {"image_uri": row.get("image_uri", ""), "label": row.get("label", ""),
            "split": row.get("split", ""), "reason": reason}


def count(name: str, n: int = 1) -> None:
    Metrics.counter(COUNTER_NAMESPACE, name).inc(n)


@beam.typehints.with_input_types(str)
@beam.typehints.with_output_types(Row)
class CheckRow(beam.DoFn):
    """One CSV line -> a row dict, or a bad row with the reason on the "bad" output. DISCARD rows are counted."""

    def __init__(self, columns: dict[str, int], width: int):
        self.columns, self.width = columns, width

    def process(self, line):
        if not line.strip():
            return
        values = next(csv.reader([line]), [])
        row, problem = check_row(values, self.columns, self.width)
        if problem == DISCARD:
            count("discarded")
        elif problem:
            yield beam.pvalue.TaggedOutput(BAD, bad_row(row, problem))
        else:
            yield row


@beam.typehints.with_input_types(str)
@beam.typehints.with_output_types(Row, bad=Row)
class CheckRows(beam.PTransform):
    """PCollection of CSV lines (header excluded) -> outputs "good" (row dicts) and "bad" (rows with a reason)."""

    def __init__(self, columns: dict[str, int], width: int):
        super().__init__()
        self.columns, self.width = columns, width

    def expand(self, lines):
        return lines | "Check" >> beam.ParDo(CheckRow(self.columns, self.width)).with_outputs(BAD, main="good")


def _resolve(keyed: tuple[str, Iterable[Row]]):
    """All rows of one (normalised) image_uri -> the row once, or every row as bad when they disagree."""
    uri, rows = keyed
    rows = list(rows)
    distinct = {(r["split"], r["label"]) for r in rows}
    if len(distinct) == 1:
        count("duplicates", len(rows) - 1)
        yield rows[0]
        return
    seen = ", ".join(f"{split}/{label}" for split, label in sorted(distinct))
    for row in rows:
        yield beam.pvalue.TaggedOutput(BAD, bad_row(row, f"the same image is listed {len(rows)} times with "
                                                       f"different split or label ({seen})"))


@beam.typehints.with_input_types(Row)
@beam.typehints.with_output_types(Row, bad=Row)
class Deduplicate(beam.PTransform):
    """Rows -> "good": one row per image (by normalised URI); "bad": every row of an image listed with
    conflicting splits or labels (which one is right cannot be known). Exact repeats are counted."""

    def expand(self, rows):
        return (
            rows
            | "ByUri" >> beam.Map(lambda row: (row["image_uri"], row))
            | "GroupByUri" >> beam.GroupByKey()
            | "Resolve" >> beam.FlatMap(_resolve).with_outputs(BAD, main="good")
        )


@beam.typehints.with_input_types(Row)
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


def csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _error_line(row: dict) -> str:
    return csv_line([row[c] for c in ERROR_COLUMNS.split(",")])


@beam.typehints.with_input_types(str)
class WriteFacts(beam.PTransform):
    """Facts lines -> facts-SSSSS-of-NNNNN.csv (FACTS_COLUMNS): what `catsdogs validate --facts` reads instead of
    the images."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, lines):
        from components.image_facts import FACTS_COLUMNS, FACTS_PREFIX

        return lines | "WriteFacts" >> beam.io.WriteToText(
            storage.join(self.output_dir, FACTS_PREFIX), file_name_suffix=".csv", header=",".join(FACTS_COLUMNS))


def _count_bad(row: dict) -> dict:
    count("bad")
    return row
