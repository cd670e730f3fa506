import csv
import io
import json
import os

import pytest
import tensorflow as tf
from PIL import Image

from components.convert.pipeline import convert
from components.convert.images import BadImage, to_rgb_jpeg
from components.errors import InputError
from components.train.data import make_dataset


def _jpeg(colour=(200, 30, 30), size=(40, 30), mode="RGB", fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode != "L" else 128).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_csv(path, rows, header=("split", "image_uri", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _read_back(out_dir) -> dict[str, tuple[str, str]]:
    """image_uri -> (split, label_text) for every record written."""
    found = {}
    for split in ("TRAIN", "VALIDATION", "TEST"):
        pattern = os.path.join(out_dir, f"{split.lower()}-*.tfrecord")
        for record in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)):
            features = tf.train.Example.FromString(record.numpy()).features.feature
            uri = features["image_uri"].bytes_list.value[0].decode()
            found[uri] = (features["split"].bytes_list.value[0].decode(), features["label_text"].bytes_list.value[0].decode())
    return found


def _errors(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "errors-00000-of-00001.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_every_good_row_arrives_and_bad_ones_are_quarantined_with_a_reason(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(30):
        path = images / f"good{i}.jpg"
        path.write_bytes(_jpeg(colour=(i * 8, 50, 50)))
        rows.append(("TRAIN" if i < 20 else "TEST", str(path), "cats" if i % 2 else "dogs"))
    (images / "text.jpg").write_text("this is not a picture")
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes(_jpeg()[:200])
    rows += [
        ("TRAIN", str(images / "text.jpg"), "cats"),
        ("TRAIN", str(images / "empty.jpg"), "cats"),
        ("TRAIN", str(images / "truncated.jpg"), "dogs"),
        ("TRAIN", str(images / "missing.jpg"), "dogs"),
        ("HOLDOUT", str(images / "good0.jpg"), "dogs"),
        ("TEST", str(images / "good1.jpg"), ""),
        ("DISCARD", str(images / "good2.jpg"), "cats"),
        ("TRAIN", str(images / "good3.jpg"), "cats"),  # exact duplicate of row 4
    ]
    out = tmp_path / "out"
    summary = convert(_write_csv(tmp_path / "in.csv", rows), str(out), max_error_fraction=0.5)

    assert _read_back(out) == {str(images / f"good{i}.jpg"): ("TRAIN" if i < 20 else "TEST", "cats" if i % 2 else "dogs")
                               for i in range(30)}
    reasons = {os.path.basename(e["image_uri"]) + ":" + e["split"]: e["reason"] for e in _errors(out)}
    assert "not an image" in reasons["text.jpg:TRAIN"]
    assert "empty file" in reasons["empty.jpg:TRAIN"]
    assert "corrupt image" in reasons["truncated.jpg:TRAIN"]
    assert "cannot read file" in reasons["missing.jpg:TRAIN"]
    assert "unknown split 'HOLDOUT'" in reasons["good0.jpg:HOLDOUT"] and "line 36" in reasons["good0.jpg:HOLDOUT"]
    assert "empty label" in reasons["good1.jpg:TEST"]
    assert (summary.good, summary.bad, summary.duplicates, summary.discarded) == (30, 6, 1, 1)
    assert summary.per_split == {"TRAIN": 20, "TEST": 10}
    assert json.loads((out / "labels.json").read_text()) == ["cats", "dogs"]
    assert json.loads((out / "summary.json").read_text())["good"] == 30


def test_label_indices_follow_the_sorted_label_list(records):
    labels = json.loads(open(os.path.join(records, "labels.json")).read())
    for split in ("TRAIN", "TEST"):
        for _, batch_labels in make_dataset(records, split, 16, 8):
            assert all(0 <= int(label) < len(labels) for label in batch_labels)
    texts = {}
    for record in tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(records, "train-*"))):
        f = tf.train.Example.FromString(record.numpy()).features.feature
        texts[f["label"].int64_list.value[0]] = f["label_text"].bytes_list.value[0].decode()
    assert texts == dict(enumerate(labels))


def test_too_many_bad_rows_fail_the_run_after_writing_the_errors(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(_jpeg())
    rows = [("TRAIN", str(tmp_path / "ok.jpg"), "a"), ("TRAIN", str(tmp_path / "nope.jpg"), "b")]
    with pytest.raises(InputError, match=r"1 of 2 rows \(50.0%\) are bad.*errors-00000-of-00001.csv"):
        convert(_write_csv(tmp_path / "in.csv", rows), str(tmp_path / "out"))
    assert [e["image_uri"] for e in _errors(tmp_path / "out")] == [str(tmp_path / "nope.jpg")]


def test_rerun_with_fewer_shards_leaves_no_stale_shards(tmp_path):
    rows = []
    for i in range(6):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(colour=(i * 30, 0, 0)))
        rows.append(("TRAIN", str(tmp_path / f"{i}.jpg"), "ab"[i % 2]))
    csv_path = _write_csv(tmp_path / "in.csv", rows)
    convert(csv_path, str(tmp_path / "out"), num_shards=3)
    assert len(list((tmp_path / "out").glob("train-*.tfrecord"))) == 3
    convert(csv_path, str(tmp_path / "out"), num_shards=1)
    assert [p.name for p in (tmp_path / "out").glob("train-*.tfrecord")] == ["train-00000-of-00001.tfrecord"]
    assert len(_read_back(tmp_path / "out")) == 6


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("split,image_uri\nTRAIN,a.jpg\n", "missing column.*label"),
        ("TRAIN,a.jpg,cats\n", "the CSV needs a header"),
        ("split,image_uri,label\n", "no rows"),
        ("split,image_uri,label\nBOGUS,a.jpg,cats\n", "no usable rows.*unknown split"),
    ],
    ids=["empty", "missing-column", "no-header", "no-rows", "no-usable-rows"],
)
def test_structurally_bad_csvs_fail_before_any_work(tmp_path, content, message):
    (tmp_path / "in.csv").write_text(content)
    with pytest.raises(InputError, match=message):
        convert(str(tmp_path / "in.csv"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_csv_is_named(tmp_path):
    with pytest.raises(InputError, match="nothing.csv does not exist"):
        convert(str(tmp_path / "nothing.csv"), str(tmp_path / "out"))


def test_clean_rgb_jpegs_pass_through_byte_for_byte():
    data = _jpeg()
    assert to_rgb_jpeg(data) == (data, 30, 40)


@pytest.mark.parametrize("mode, fmt", [("RGBA", "PNG"), ("P", "GIF"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "BMP")])
def test_other_modes_and_formats_become_rgb_jpegs(mode, fmt):
    jpeg, height, width = to_rgb_jpeg(_jpeg(mode=mode, fmt=fmt, colour=(10, 20, 30, 255) if mode == "RGBA" else (10, 20, 30) if mode != "CMYK" else (10, 20, 30, 0)))
    with Image.open(io.BytesIO(jpeg)) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (40, 30))
    assert (height, width) == (30, 40)


def test_decompression_bombs_are_rejected():
    header_only = io.BytesIO()
    Image.new("1", (10000, 10000)).save(header_only, format="PNG")
    with pytest.raises(BadImage, match="decompression bomb"):
        to_rgb_jpeg(header_only.getvalue())
