"""Validation after conversion reads no image: `catsdogs convert` writes each image's facts (facts-*.csv beside
the shards) and `catsdogs validate --facts` finds the same pairs from them, through the commands users run."""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil

import pytest

from components.image_facts import FACTS_COLUMNS, Facts, image_facts
from tests.test_validate import _cli, _read_csv, planted  # noqa: F401 - planted is a fixture


@pytest.fixture(scope="module")
def converted(planted, tmp_path_factory):  # noqa: F811
    """A copy of the planted set converted by `catsdogs convert`: (csv path, its folder, the convert output)."""
    csv_path, _ = planted
    source = os.path.dirname(csv_path)
    work = tmp_path_factory.mktemp("facts")
    root = work / "images"
    shutil.copytree(source, root)
    copied = root / "images.csv"
    copied.write_text(open(csv_path).read().replace(source, str(root)))
    out = work / "converted"
    done = _cli("convert", str(copied), "--output-dir", str(out), "--facts", cwd=work)
    assert done.returncode == 0, done.stderr
    return str(copied), root, out


def _pairs(path, root) -> set:
    return {(row["kind"], row["scope"], row["distance"],
             frozenset((row["image_a"].replace(str(root), "@"), row["image_b"].replace(str(root), "@"))))
            for row in _read_csv(path)}


def test_convert_writes_the_facts_validation_computes_for_every_image(converted):
    csv_path, _, out = converted
    shards = glob.glob(str(out / "facts-*-of-*.csv"))
    assert shards
    rows = [row for shard in shards for row in csv.DictReader(open(shard, newline=""))]
    assert tuple(rows[0]) == FACTS_COLUMNS
    listed = {row["image_uri"]: (row["split"], row["label"]) for row in _read_csv(csv_path)}
    assert {row["image_uri"]: (row["split"], row["label"]) for row in rows} == listed
    for row in rows:
        with open(row["image_uri"], "rb") as f:
            assert Facts.parse([row[c] for c in FACTS_COLUMNS[3:]]) == image_facts(f.read()), row["image_uri"]


def test_validate_facts_finds_the_same_pairs_without_reading_an_image(planted, converted, tmp_path):  # noqa: F811
    csv_path, root, out = converted
    by_images = _cli("validate", csv_path, "--output-dir", str(tmp_path / "images"), cwd=tmp_path)
    assert by_images.returncode == 2, by_images.stderr
    expected = _pairs(tmp_path / "images" / "pairs.csv", root)
    assert len(expected) == 7
    # Only the images of the pairs (validation.html's thumbnails) stay; every other image is gone.
    shown = {uri for row in _read_csv(tmp_path / "images" / "pairs.csv") for uri in (row["image_a"], row["image_b"])}
    for row in _read_csv(csv_path):
        if row["image_uri"] not in shown:
            os.remove(row["image_uri"])

    done = _cli("validate", csv_path, "--output-dir", str(tmp_path / "facts"), "--facts", str(out), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("catsdogs validate: error: ")]
    assert len(errors) == 1 and "4 pairs across splits (1 exact, 3 near" in errors[0], done.stderr
    assert _pairs(tmp_path / "facts" / "pairs.csv", root) == expected
    report = json.loads((tmp_path / "facts" / "validation.json").read_text())
    reference = json.loads((tmp_path / "images" / "validation.json").read_text())
    assert report["images_read"] == 0 and reference["images_read"] == 34
    for key in ("images", "counts", "exact", "near", "imbalance", "too_few", "stats"):
        assert report[key] == reference[key], key
    assert "<img" in (tmp_path / "facts" / "validation.html").read_text()

    fixed = _cli("validate", csv_path, "--output-dir", str(tmp_path / "fixed"), "--facts", str(out), "--fix",
                 cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    cleaned = {row["image_uri"]: row["split"] for row in _read_csv(tmp_path / "fixed" / "cleaned.csv")}
    dropped = {uri.replace(str(root), "@") for uri, split in cleaned.items() if split == "DISCARD"}
    assert dropped == {"@/planted/" + n for n in ("exact_leak.jpg", "q60.jpg", "half.jpg", "bright.jpg",
                                                  "conflict.jpg")} | {"@/dogs/05.jpg"}


def test_convert_without_facts_writes_none_and_validate_facts_then_says_so_in_one_line(planted, tmp_path):  # noqa: F811
    out = tmp_path / "converted"
    done = _cli("convert", planted[0], "--output-dir", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert glob.glob(str(out / "train-*.tfrecord")) and not glob.glob(str(out / "facts-*"))
    done = _cli("validate", planted[0], "--output-dir", str(tmp_path / "r"), "--facts", str(out), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"catsdogs validate: error: --facts {out}: no facts-")


@pytest.mark.parametrize("convert_flags", [[], ["--format", "tfrecorder", "--num-shards", "3"]],
                         ids=["jpeg", "tfrecorder-gzip-3-shards"])
def test_validate_records_out_hands_on_the_converted_records_less_the_dropped_rows(planted, tmp_path, convert_flags):  # noqa: F811
    """`convert --facts` then `validate --facts --fix --records-out`: the records to train on are convert's, not
    read again where no row was dropped (hard links), and without the six rows --fix set to DISCARD: a tfrecorder
    record names no image_uri, so those are matched by file name, label and split."""
    import tensorflow as tf

    csv_path = planted[0]
    out, records = tmp_path / "converted", tmp_path / "records"
    done = _cli("convert", csv_path, "--output-dir", str(out), "--facts", *convert_flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = _cli("validate", csv_path, "--output-dir", str(tmp_path / "v"), "--facts", str(out), "--fix",
                "--records-out", str(records), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"records to train on in {records}: those of {out}, 6 left out by --fix" in done.stdout

    def keys(folder):
        found = []
        for path in sorted(glob.glob(str(folder / "*.tfrecord*"))):
            compression = "GZIP" if path.endswith(".gz") else ""
            for record in tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator():
                feature = tf.train.Example.FromString(record).features.feature
                found.append((feature["image_name"].bytes_list.value[0].decode(),
                              feature["split"].bytes_list.value[0].decode()))
        return found

    before, after = keys(out), keys(records)
    quarantine = _read_csv(tmp_path / "v" / "quarantine.csv")
    dropped = [(row["image_uri"].rsplit("/", 1)[-1], row["split"]) for row in quarantine]
    assert len(dropped) == 6 and sorted(after + dropped) == sorted(before)
    summary = json.loads((records / "summary.json").read_text())
    assert sum(summary["per_split"].values()) == summary["good"] == len(after)
    assert {s: sum(1 for _, split in after if split == s) for s in summary["per_split"]} == summary["per_split"]
    shards = sorted(os.path.basename(p) for p in glob.glob(str(out / "*.tfrecord*")))
    assert shards == sorted(os.path.basename(p) for p in glob.glob(str(records / "*.tfrecord*")))
    linked = [name for name in shards if os.stat(out / name).st_ino == os.stat(records / name).st_ino]
    assert len(linked) < len(shards)  # the shards holding a dropped row were rewritten
    if convert_flags:
        assert linked, "every shard was rewritten"
    assert not glob.glob(str(records / "facts-*"))


def test_records_out_without_facts_is_one_line(planted, tmp_path):  # noqa: F811
    done = _cli("validate", planted[0], "--output-dir", str(tmp_path / "v"), "--records-out", str(tmp_path / "r"),
                cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["catsdogs validate: error: --records-out needs --facts DIR (the "
                                                "converted records to hand on)"]
    assert not (tmp_path / "v").exists() and not (tmp_path / "r").exists()


def test_a_failed_records_out_leaves_the_previous_records_and_the_users_files(planted, tmp_path):  # noqa: F811
    """A second `validate --records-out` into the same folder that fails half-way (a shard it must rewrite is
    corrupt) leaves the first run's records exactly as they were, a user's file beside them, and no staging."""
    csv_path = planted[0]
    out, records = tmp_path / "converted", tmp_path / "records"
    assert _cli("convert", csv_path, "--output-dir", str(out), "--facts", cwd=tmp_path).returncode == 0
    args = ["validate", csv_path, "--output-dir", str(tmp_path / "v"), "--facts", str(out), "--fix",
            "--records-out", str(records)]
    assert _cli(*args, cwd=tmp_path).returncode == 0
    (records / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in records.iterdir()}
    for shard in out.glob("test-*.tfrecord"):  # TEST holds dropped rows: this shard is rewritten, not linked
        shard.write_bytes(shard.read_bytes()[:100])
    failed = _cli(*args, cwd=tmp_path)
    assert failed.returncode != 0
    assert {p.name: p.read_bytes() for p in records.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if ".catsdogs-staging-" in p.name]
