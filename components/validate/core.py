"""Data validation of an image CSV (split,image_uri,label) before training: duplicates, leakage between splits,
near-duplicates, balance and image statistics, and the gate that stops a run on leakage or conflicting labels.

One streaming pass: each image is read once; what is kept per image is its index entry (an 8-byte content hash,
an 8-byte perceptual hash, a split and a label code, its CSV row: INDEX_BYTES_PER_IMAGE); the rest is counters. The
pairs are found afterwards from the index alone (exact copies by sorting the content hashes, near copies by
multi-index hashing in near.py), and a second pass over the CSV's text (no image is read again) names them.
With --facts the entries come from the facts `catsdogs convert` wrote (entries.py) and no image is read at all,
except the thumbnails of the pairs in validation.html.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import re
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from components import outputs, storage
from components.contracts import CSV_COLUMNS, DISCARD, SPLITS, TRAIN
from components.errors import InputError
from components.image_facts import Facts
from components.validate.config import VALIDATE
from components.validate.entries import entries, read_facts, read_rows
from components.validate.near import near_pairs

log = logging.getLogger(__name__)

# What the validation writes into its output folder.
REPORT_FILE = "validation.json"
PAIRS_FILE = "pairs.csv"
CLEANED_FILE = "cleaned.csv"  # with --fix: the CSV the rest of the run uses
QUARANTINE_FILE = "quarantine.csv"  # with --fix: the rows set to DISCARD, with the reason
PAIR_COLUMNS = ("kind", "scope", "distance", "split_a", "label_a", "image_a", "split_b", "label_b", "image_b")
QUARANTINE_COLUMNS = ("split", "image_uri", "label", "reason")
HTML_FILE = "validation.html"  # the page a person looks at: components/validate/report.py
# The output folder appears all-or-nothing (components/outputs.py): the files are staged beside it and moved in
# when the validation has finished (gate passed or not: the failed gate's line points at pairs.csv); a run that
# crashes or finds no readable image leaves the previous output as it was. validation.json is moved last.
_NAMES = (REPORT_FILE, HTML_FILE, PAIRS_FILE, CLEANED_FILE, QUARANTINE_FILE)
KIND = outputs.Kind(tool="catsdogs validate", ours=re.compile("^(" + "|".join(map(re.escape, _NAMES)) + ")$"),
                    claimed=re.compile("^(" + "|".join(map(re.escape, _NAMES)) + ")$"), last=REPORT_FILE)

# Defaults of the gate: components/validate/config.py
NEAR_DUPLICATE_DISTANCE = VALIDATE.near_duplicate_distance
MAX_LEAKAGE = VALIDATE.max_leakage  # pairs across splits, exact or near
MAX_CONFLICTING = VALIDATE.max_conflicting  # pairs of (near-)identical images with different labels
MAX_IMBALANCE = VALIDATE.max_imbalance
MIN_TRAIN_PER_LABEL = 10  # fewer TRAIN images of a label is reported as too few to train on

INDEX_BYTES_PER_IMAGE = 8 + 8 + 1 + 2 + 8  # content hash, pHash, split, label, CSV row (array.array, no objects)
SIZE_BINS = (0, 64, 128, 224, 256, 384, 512, 768, 1024, 2048, 4096)


@dataclass
class Report:
    rows: int = 0
    images: int = 0
    images_read: int = 0  # image files this validation opened (0 with --facts: convert's facts are used)
    unreadable: int = 0
    discarded: int = 0
    unreadable_examples: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> images
    imbalance: float = 0.0  # largest / smallest label count in TRAIN
    too_few: list[str] = field(default_factory=list)
    exact: dict[str, int] = field(default_factory=dict)  # redundant, conflicting, leakage (pairs)
    near: dict[str, int] = field(default_factory=dict)  # within, across, conflicting (pairs)
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE
    stats: dict = field(default_factory=dict)
    fixed: dict[str, int] = field(default_factory=dict)  # with --fix: rows set to DISCARD, by reason
    problems: list[str] = field(default_factory=list)  # why the gate failed; empty when it passed

    @property
    def leakage(self) -> int:
        return self.exact.get("leakage", 0) + self.near.get("across", 0)

    @property
    def conflicting(self) -> int:
        return self.exact.get("conflicting", 0) + self.near.get("conflicting", 0)

    def metrics(self) -> dict[str, float]:
        """The counts for KFP Metrics and W&B."""
        flat = {"images": self.images, "unreadable": self.unreadable, "imbalance": round(self.imbalance, 3),
                "leakage": self.leakage, "conflicting": self.conflicting}
        flat.update({f"exact_{k}": v for k, v in self.exact.items()})
        flat.update({f"near_{k}": v for k, v in self.near.items()})
        flat.update({f"fixed_{k}": v for k, v in self.fixed.items()})
        return flat


def _has_alpha(mode: str) -> bool:
    return mode in ("RGBA", "LA", "PA", "RGBa", "La")


def _is_grey(mode: str) -> bool:
    return mode in ("1", "L", "LA", "I", "I;16", "F")


class Stats:
    """Image statistics in constant memory: histograms and counters."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.width = Counter()
        self.height = Counter()
        self.aspect = Counter()
        self.formats = Counter()
        self.modes = Counter()
        self.small = self.grey = self.alpha = self.rotated = self.images = 0

    @staticmethod
    def _bin(value: int) -> str:
        low = max(b for b in SIZE_BINS if b <= value)
        higher = [b for b in SIZE_BINS if b > value]
        return f"{low}-{higher[0] - 1}" if higher else f"{low}+"

    def add(self, f: Facts) -> None:
        self.images += 1
        self.width[self._bin(f.width)] += 1
        self.height[self._bin(f.height)] += 1
        self.aspect[f"{round(f.width / max(f.height, 1), 1):.1f}"] += 1
        self.formats[f.format] += 1
        self.modes[f.mode] += 1
        self.small += min(f.width, f.height) < self.image_size
        self.grey += _is_grey(f.mode)
        self.alpha += _has_alpha(f.mode)
        self.rotated += f.exif_rotated

    def to_dict(self) -> dict:
        def share(count: int) -> float:
            return round(count / self.images, 4) if self.images else 0.0

        def order(counter: Counter) -> dict:
            return dict(sorted(counter.items(), key=lambda kv: float(kv[0].split("-")[0].rstrip("+"))))

        return {"width": order(self.width), "height": order(self.height),
                "aspect": dict(sorted(self.aspect.items(), key=lambda kv: float(kv[0]))),
                "formats": dict(self.formats.most_common()), "modes": dict(self.modes.most_common()),
                "smaller_than_training_size": self.small, "training_size": self.image_size,
                "share_smaller": share(self.small), "share_grey": share(self.grey),
                "share_alpha": share(self.alpha), "share_exif_rotated": share(self.rotated)}


def validate(csv_path: str, output_dir: str, *, fix: bool = False, max_leakage: int = MAX_LEAKAGE,
             max_conflicting: int = MAX_CONFLICTING, near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE,
             max_imbalance: float = MAX_IMBALANCE, image_size: int = VALIDATE.min_image_size,
             facts_dir: str | None = None) -> Report:
    """Validates the CSV's images and writes validation.json and pairs.csv to output_dir (with fix also
    cleaned.csv and quarantine.csv). Returns the report; its `problems` say why the gate fails (the caller
    decides what a failure does: an error line, a failed step). With facts_dir (a `catsdogs convert` output
    folder of that CSV) the facts convert wrote are used and no image is read, except the thumbnails of the pairs
    in validation.html; the CSV is then read only to write cleaned.csv with fix."""
    if near_duplicate_distance < 0 or near_duplicate_distance > 32:
        raise InputError(f"--near-duplicate-distance must be between 0 and 32 bits, got {near_duplicate_distance}")
    if max_leakage < 0 or max_conflicting < 0 or max_imbalance < 0:
        raise InputError("--max-leakage, --max-conflicting and --max-imbalance must not be negative")
    target = outputs.resolve(output_dir)
    outputs.check_output_dir(target, KIND)  # before any image is read
    with outputs.locked(target, KIND):
        previous = outputs.check_output_dir(target, KIND)  # again: no other run can change it now
        outputs.clean_leftovers(target)
        staging = outputs.new_staging_dir(target, KIND)
        try:
            report = _validate(csv_path, staging, fix, max_leakage, max_conflicting, near_duplicate_distance,
                               max_imbalance, image_size, facts_dir)
        except BaseException:
            outputs.discard(staging, KIND)  # the previous output stays as it was
            raise
        outputs.commit(staging, target, previous, KIND)
    log.info("validated: %s", summary_line(report))
    return report


def _validate(csv_path: str, output_dir: str, fix: bool, max_leakage: int, max_conflicting: int,
              near_duplicate_distance: int, max_imbalance: float, image_size: int,
              facts_dir: str | None = None) -> Report:
    report = Report(near_duplicate_distance=near_duplicate_distance)
    stats = Stats(image_size)
    labels: dict[str, int] = {}
    rows = array("q")  # the row's ordinal among the CSV's rows, for each indexed image
    content, phash = array("Q"), array("Q")
    split_code, label_code = array("B"), array("H")
    counts: dict[str, Counter] = {s: Counter() for s in SPLITS}

    for ordinal, entry in enumerate(entries(csv_path, facts_dir, report)):
        if entry is None:  # a row without a usable image: counted in the report, not indexed
            continue
        split, uri, label, facts = entry
        rows.append(ordinal)
        content.append(facts.content)
        phash.append(facts.phash)
        split_code.append(SPLITS.index(split))
        label_code.append(labels.setdefault(label, len(labels)))
        counts[split][label] += 1
        stats.add(facts)
        if report.rows % 1000 == 0:
            log.info("validated %d rows", report.rows)
    report.images = len(rows)
    if not report.images:
        raise InputError(f"{'--facts ' + facts_dir if facts_dir else 'CSV ' + csv_path}: no readable image in "
                         "TRAIN, VALIDATION or TEST rows")
    report.counts = {s: dict(sorted(c.items())) for s, c in counts.items() if c}
    report.stats = stats.to_dict()
    _balance(report, list(labels))

    splits, label_ids = np.frombuffer(split_code, np.uint8), np.frombuffer(label_code, np.uint16)
    exact_i, exact_j = _exact_pairs(np.frombuffer(content, np.uint64))
    near_i, near_j, near_d = near_pairs(np.frombuffer(phash, np.uint64), near_duplicate_distance)
    copies = np.frombuffer(content, np.uint64)
    not_exact = copies[near_i] != copies[near_j]  # exact copies have the same pHash: counted once, as exact
    near_i, near_j, near_d = near_i[not_exact], near_j[not_exact], near_d[not_exact]

    pairs = [("exact", a, b, 0) for a, b in zip(exact_i.tolist(), exact_j.tolist(), strict=True)]
    pairs += [("near", a, b, d) for a, b, d in zip(near_i.tolist(), near_j.tolist(), near_d.tolist(), strict=True)]
    drop = _fix_plan(pairs, splits, label_ids) if fix else {}
    _write_outputs(csv_path, output_dir, pairs, rows, drop, facts_dir)
    report.fixed = dict(Counter(reason.split(":")[0] for reason in drop.values()))
    # The counts the gate reads: with a fix, those of the pairs that remain (a pair with a dropped side is gone).
    _count_pairs(report, [p for p in pairs if p[1] not in drop and p[2] not in drop], splits, label_ids)

    if report.leakage > max_leakage:
        report.problems.append(f"{report.leakage} pairs across splits ({report.exact['leakage']} exact, "
                               f"{report.near['across']} near; at most {max_leakage} allowed)")
    if report.conflicting > max_conflicting:
        report.problems.append(f"{report.conflicting} pairs with conflicting labels ({report.exact['conflicting']} "
                               f"exact, {report.near['conflicting']} near; at most {max_conflicting} allowed)")
    if max_imbalance and report.imbalance > max_imbalance:
        report.problems.append(f"TRAIN imbalance {report.imbalance:.1f} (largest/smallest label) is over "
                               f"{max_imbalance}")
    storage.write_text(storage.join(output_dir, REPORT_FILE),
                       json.dumps({**asdict(report), "leakage": report.leakage, "conflicting": report.conflicting,
                                   "index_bytes_per_image": INDEX_BYTES_PER_IMAGE}, indent=1))
    from components.validate.report import page  # matplotlib: only once the findings are known

    storage.write_text(storage.join(output_dir, HTML_FILE), page(output_dir))
    return report


def _balance(report: Report, labels: list[str]) -> None:
    train = report.counts.get(TRAIN, {})
    if train:
        sizes = [train.get(label, 0) for label in labels]
        report.imbalance = max(sizes) / max(min(sizes), 1)  # a label without TRAIN images counts as 1
    for label in labels:
        if train.get(label, 0) < MIN_TRAIN_PER_LABEL:
            report.too_few.append(f"{label}: {train.get(label, 0)} TRAIN images (fewer than "
                                  f"{MIN_TRAIN_PER_LABEL} to train on)")
        if not any(report.counts.get(s, {}).get(label, 0) for s in SPLITS if s != TRAIN):
            report.too_few.append(f"{label}: no VALIDATION or TEST image (nothing to evaluate it on)")


def _exact_pairs(content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j of equal content hashes, every member of a group paired with the group's first."""
    order = np.argsort(content, kind="stable")
    ordered = content[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # positions equal to their predecessor
    if not len(same):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    first = starts[np.searchsorted(starts, same, "right") - 1]
    return order[first].astype(np.int64), order[same].astype(np.int64)


def _fix_plan(pairs, splits: np.ndarray, label_ids: np.ndarray) -> dict[int, str]:
    """Index entries to set to DISCARD, with the reason: both images of a conflicting pair (which label is right
    is a person's call), and of a pair across splits the copy in the later split (TRAIN keeps its image)."""
    drop: dict[int, str] = {}
    for kind, a, b, _ in pairs:
        if label_ids[a] != label_ids[b]:
            for x, other in ((a, b), (b, a)):
                drop.setdefault(x, f"conflicting: {kind} copy of a row labelled differently (entry {other})")
    for kind, a, b, _ in pairs:
        if splits[a] != splits[b] and a not in drop and b not in drop:
            later, earlier = (a, b) if splits[a] > splits[b] else (b, a)
            drop[later] = f"leakage: {kind} copy of an image in {SPLITS[splits[earlier]]} (entry {earlier})"
    return drop


def _count_pairs(report: Report, pairs, splits: np.ndarray, label_ids: np.ndarray) -> None:
    exact = Counter({"redundant": 0, "conflicting": 0, "leakage": 0})
    near = Counter({"within": 0, "across": 0, "conflicting": 0})
    for kind, a, b, _ in pairs:
        across, conflicting = splits[a] != splits[b], label_ids[a] != label_ids[b]
        if kind == "exact":
            exact["leakage"] += across
            exact["conflicting"] += conflicting
            exact["redundant"] += not across and not conflicting
        else:
            near["across"] += across
            near["within"] += not across
            near["conflicting"] += conflicting
    report.exact = {k: int(v) for k, v in exact.items()}
    report.near = {k: int(v) for k, v in near.items()}


def _write_outputs(csv_path: str, output_dir: str, pairs, rows: array, drop: dict[int, str],
                   facts_dir: str | None = None) -> None:
    """pairs.csv (and with a fix plan cleaned.csv and quarantine.csv, streamed), from a second pass over the
    entries' text (the CSV, or convert's facts: no image is read again): only the rows named by a pair are held,
    never the whole CSV. With facts, the CSV's rows are matched to dropped entries by their normalised image_uri
    (convert's spelling)."""
    from apache_beam.io.filesystems import FileSystems

    entry_of = {rows[x]: x for _, a, b, _ in pairs for x in (a, b)}
    dropped = {rows[x]: reason for x, reason in drop.items()}
    named: dict[int, tuple[str, str, str]] = {}
    source = ((s, u, lab) for s, u, lab, _ in read_facts(facts_dir)) if facts_dir else (
        (s, u, lab) for _, s, u, lab in read_rows(csv_path))
    dropped_uris: dict[str, str] = {}
    for ordinal, (split, uri, label) in enumerate(source):
        if ordinal in entry_of:
            named[entry_of[ordinal]] = (split, uri, label)
        if ordinal in dropped:
            dropped_uris[uri] = dropped[ordinal]  # only the dropped rows are held
    if drop:
        with contextlib.ExitStack() as files:
            cleaned = csv.writer(files.enter_context(_text_writer(FileSystems, output_dir, CLEANED_FILE)))
            quarantine = csv.writer(files.enter_context(_text_writer(FileSystems, output_dir, QUARANTINE_FILE)))
            cleaned.writerow(CSV_COLUMNS)
            quarantine.writerow(QUARANTINE_COLUMNS)
            for ordinal, (_, split, uri, label) in enumerate(read_rows(csv_path)):
                reason = dropped_uris.get(storage.normalise_uri(uri)) if facts_dir else dropped.get(ordinal)
                cleaned.writerow((DISCARD if reason else split, uri, label))
                if reason:
                    quarantine.writerow((split, uri, label, reason))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PAIR_COLUMNS)
    for kind, a, b, distance in pairs:
        (sa, ua, la), (sb, ub, lb) = named[a], named[b]
        writer.writerow((kind, "across" if sa != sb else "within", distance, sa, la, ua, sb, lb, ub))
    storage.write_text(storage.join(output_dir, PAIRS_FILE), text.getvalue())


@contextlib.contextmanager
def _text_writer(filesystems, output_dir: str, name: str):
    with filesystems.create(storage.join(output_dir, name)) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        yield text
        text.flush()
        text.detach()


def summary_line(report: Report) -> str:
    """One line: the counts that matter, for the CLI, the step summary and the log."""
    text = (f"{report.images} images, {report.leakage} pairs across splits, {report.conflicting} conflicting, "
            f"{report.exact.get('redundant', 0)} exact + {report.near.get('within', 0)} near copies within splits, "
            f"TRAIN imbalance {report.imbalance:.1f}, {report.unreadable} unreadable")
    if report.fixed:
        text += "; fixed: " + ", ".join(f"{n} {k} rows set to DISCARD" for k, n in sorted(report.fixed.items()))
    return text


class GateFailed(InputError):
    """The data failed the validation gate; the message is the one line that says why and where the pairs are."""


def check_gate(report: Report, output_dir: str) -> None:
    """Raises GateFailed naming the counts and where the pairs are listed when the report has problems."""
    if report.problems:
        raise GateFailed(f"validation failed: {'; '.join(report.problems)}; the pairs are listed in "
                         f"{storage.join(output_dir, PAIRS_FILE)} and shown in {HTML_FILE} beside it (--fix drops "
                         f"the held-out copies and quarantines conflicting rows)")
