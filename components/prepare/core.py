"""Scans `<label>/<file>` or `<split>/<label>/<file>` into rows of `split,image_uri,label`.

Without split folders each image's split comes from a hash: of its path relative to the root (`path`, the
default), or of its bytes (`content`), so adding images never moves old ones to another split, and the same tree
always gives the same CSV. `content` also puts every exact copy of a photo in one split, at the price of reading
every image here; `path` only lists the files (a million objects on GCS in a minute, where reading them would take
hours in this one process), and the validate step finds the copies that cross splits, exact or near, either way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass

from components import storage
from components.contracts import CSV_COLUMNS, SPLITS
from components.errors import InputError
from components.prepare.config import PREPARE, SPLIT_BY

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
SPLIT_FOLDERS = {
    "train": "TRAIN", "training": "TRAIN",
    "validation": "VALIDATION", "valid": "VALIDATION", "val": "VALIDATION", "eval": "VALIDATION",
    "test": "TEST", "testing": "TEST",
}


@dataclass(frozen=True)
class Row:
    split: str
    image_uri: str
    label: str


DEFAULT_SPLIT_BY = PREPARE.split_by


def hash_split(key: str | bytes, train_fraction: float, validation_fraction: float) -> str:
    """TRAIN, VALIDATION or TEST, fixed by the key alone (a relative path, or the image's bytes; sha256 -> a
    number in [0, 1))."""
    digest = hashlib.sha256(key.encode("utf-8") if isinstance(key, str) else key).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < train_fraction:
        return "TRAIN"
    if position < train_fraction + validation_fraction:
        return "VALIDATION"
    return "TEST"


def _check_fractions(train_fraction: float, validation_fraction: float) -> None:
    for name, value in (("train fraction", train_fraction), ("validation fraction", validation_fraction)):
        if not 0 <= value <= 1:
            raise InputError(f"{name} must be between 0 and 1, got {value}")
    if train_fraction + validation_fraction > 1:
        raise InputError(
            f"train fraction + validation fraction must be at most 1, got {train_fraction + validation_fraction}"
        )


def scan_images(
    images_root: str, train_fraction: float = PREPARE.train_fraction,
    validation_fraction: float = PREPARE.validation_fraction,
    split_by: str = DEFAULT_SPLIT_BY,
) -> list[Row]:
    """Lists the labelled images under images_root as CSV rows, sorted by URI.

    The layout is read from the first level: if every top-level folder is a split name (train, validation,
    test, ...), files are `<split>/<label>/<file>`; otherwise `<label>/<file>` and the split is hashed.
    """
    _check_fractions(train_fraction, validation_fraction)
    if split_by not in SPLIT_BY:
        raise InputError(f"--split-by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    images_root = images_root.rstrip("/") or "/"
    if not storage.exists(images_root):
        raise InputError(f"images root {images_root} does not exist")
    files = list(storage.walk_files(images_root))
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS) and not f.split("/")[-1].startswith(".")]
    if not images:
        raise InputError(
            f"no images under {images_root}: expected <label>/<file> or <split>/<label>/<file> "
            f"with extensions {', '.join(IMAGE_EXTENSIONS)} ({len(files)} other files found)"
        )
    skipped = len(files) - len(images)
    if skipped:
        log.warning("ignored %d files under %s that are not images by extension", skipped, images_root)

    split_layout = all(f.split("/", 1)[0].lower() in SPLIT_FOLDERS for f in images)
    depth = 3 if split_layout else 2
    rows = []
    for relative in images:
        parts = relative.split("/")
        if len(parts) != depth:
            expected = "<split>/<label>/<file>" if split_layout else "<label>/<file>"
            raise InputError(
                f"{storage.join(images_root, relative)}: expected {expected} below {images_root}; "
                f"this file is {len(parts) - 1} folder(s) deep"
            )
        label = parts[-2]
        split = (
            SPLIT_FOLDERS[parts[0].lower()]
            if split_layout
            else hash_split(relative if split_by == "path" else storage.read_bytes(storage.join(images_root, relative)),
                            train_fraction, validation_fraction)
        )
        rows.append(Row(split, storage.join(images_root, relative), label))

    labels = sorted({r.label for r in rows})
    if len(labels) < 2:
        raise InputError(f"{images_root}: found only the label {labels}; a classifier needs at least two")
    return rows


def rows_to_csv(rows: list[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows((r.split, r.image_uri, r.label) for r in rows)
    return buffer.getvalue()


def prepare_csv(
    images_root: str, output_csv: str, train_fraction: float = PREPARE.train_fraction,
    validation_fraction: float = PREPARE.validation_fraction,
    split_by: str = DEFAULT_SPLIT_BY,
) -> dict[str, int]:
    """Writes the CSV for images_root to output_csv (local or gs://) and returns the row count per split."""
    rows = scan_images(images_root, train_fraction, validation_fraction, split_by)
    storage.write_text(output_csv, rows_to_csv(rows))
    counts = {split: sum(r.split == split for r in rows) for split in SPLITS}
    log.info("wrote %d rows to %s: %s", len(rows), output_csv, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts
