"""Where the validation's index entries come from: the images of the CSV's rows, each read once, or the facts
`catsdogs convert` wrote beside its shards (facts-SSSSS-of-NNNNN.csv), which read no image. Both stream: nothing
here holds more than one row.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from typing import TYPE_CHECKING

from components import storage
from components.contracts import CSV_COLUMNS, DISCARD, SPLITS, SUMMARY_FILE
from components.errors import InputError
from components.image_facts import FACTS_COLUMNS, FACTS_PREFIX, Facts, image_facts
from components.image_files import BadImage

if TYPE_CHECKING:
    from components.validate.core import Report

log = logging.getLogger(__name__)


def read_rows(csv_path: str):
    """(line number, split, image_uri, label) of each row, streamed; the header must hold split,image_uri,label.
    Rows of an unknown split or with empty fields are skipped with a warning (convert reports them)."""
    from apache_beam.io.filesystems import FileSystems  # gs:// and local, streamed

    if not FileSystems.exists(csv_path) or (not storage.is_gcs(csv_path) and os.path.isdir(csv_path)):
        raise InputError(f"CSV {csv_path} does not exist or is not a file")
    with FileSystems.open(csv_path) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        header = [name.strip().lower() for name in next(reader, [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise InputError(f"CSV {csv_path} line 1: missing column(s) {', '.join(missing)}; "
                             f"expected a header {','.join(CSV_COLUMNS)}")
        index = [header.index(c) for c in CSV_COLUMNS]
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            if len(values) < len(header):
                log.warning("CSV %s line %d: %d fields, header has %d; skipped", csv_path, reader.line_num,
                            len(values), len(header))
                continue
            split, uri, label = (values[i].strip() for i in index)
            yield reader.line_num, split.upper(), uri, label


def facts_files(facts_dir: str) -> list[str]:
    """The facts-SSSSS-of-NNNNN.csv shards `catsdogs convert` wrote into facts_dir, in name order."""
    from apache_beam.io.filesystems import FileSystems

    pattern = storage.join(facts_dir, f"{FACTS_PREFIX}-*-of-*.csv")
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not paths:
        raise InputError(f"--facts {facts_dir}: no {FACTS_PREFIX}-*.csv in it (written by catsdogs convert into "
                         "its output folder)")
    return paths


def read_facts(facts_dir: str):
    """(split, image_uri, label, Facts) of each converted image, streamed from the facts shards."""
    from apache_beam.io.filesystems import FileSystems

    for path in facts_files(facts_dir):
        with FileSystems.open(path) as raw:
            reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            if tuple(next(reader, [])) != FACTS_COLUMNS:
                raise InputError(f"{path} line 1: expected the header {','.join(FACTS_COLUMNS)}")
            for values in reader:
                if len(values) != len(FACTS_COLUMNS):
                    raise InputError(f"{path} line {reader.line_num}: {len(values)} fields, expected "
                                     f"{len(FACTS_COLUMNS)}")
                try:
                    facts = Facts.parse(values[3:])
                except ValueError as e:
                    raise InputError(f"{path} line {reader.line_num}: {e}") from None
                yield values[0], values[1], values[2], facts


def _unconverted(facts_dir: str) -> int:
    """The rows convert could not use (its summary.json's bad count): validation's unreadable images."""
    path = storage.join(facts_dir, SUMMARY_FILE)
    with contextlib.suppress(OSError, ValueError):
        return int(json.loads(storage.read_bytes(path)).get("bad", 0))
    return 0


def _problem_free(split: str, uri: str, label: str) -> bool:
    return split in SPLITS and bool(uri) and bool(label)


def entries(csv_path: str, facts_dir: str | None, report: Report):
    """(split, image_uri, label, Facts) of each usable image, in the order _write_outputs names them again: from
    convert's facts (no image read), or by reading each CSV row's image once; None for a row without a usable
    image. The report's row, unreadable and images_read counts are kept on the way."""
    if facts_dir:
        report.unreadable = _unconverted(facts_dir)
        for split, uri, label, facts in read_facts(facts_dir):
            report.rows += 1
            yield (split, uri, label, facts) if _problem_free(split, uri, label) else None
        return
    for line, split, uri, label in read_rows(csv_path):
        report.rows += 1
        if not _problem_free(split, uri, label):
            report.discarded += split == DISCARD
            yield None
            continue
        try:
            report.images_read += 1
            facts = image_facts(storage.read_bytes(uri))
        except (BadImage, OSError) as e:
            report.unreadable += 1
            if len(report.unreadable_examples) < 5:
                report.unreadable_examples.append(f"line {line}: {uri}: {e}")
            yield None
            continue
        yield split, uri, label, facts
