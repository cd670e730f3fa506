"""The launcher's streaming pre-pass over the CSV (`scan_csv`) and the per-row check Beam's workers share with it.

The pass keeps only the header, the label set and per-split counts: the label vocabulary and shard counts are fixed
before the job is built, structural problems are refused before anything is written. It takes ~1 s per 100k rows
here and its memory does not grow with them (a side input would need the labels before the shard writers start
anyway).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from components import storage
from components.contracts import CSV_COLUMNS, CSV_SPLITS, DISCARD, SPLITS
from components.errors import InputError
from components.storage import normalise_uri  # shared: validate --fix matches facts to CSV rows by it

REQUIRED_COLUMNS = CSV_COLUMNS
KNOWN_SPLITS = SPLITS


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
