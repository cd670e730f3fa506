"""The two record schemas, the readers, TFRecorder compatibility, and the conversion's other entry points."""

import io
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

import components.convert.accessor  # noqa: F401 - registers df.tensorflow
from components.convert import schema
from components.convert.inspect import inspect_records
from components.convert.pipeline import convert
from components.errors import InputError
from components.prepare import prepare_csv
from components.train.data import detect_format, make_dataset
from pipelines.cli import main


def _save(path, image: Image.Image, fmt: str, **kwargs) -> str:
    image.save(path, format=fmt, **kwargs)
    return str(path)


def _records(out_dir, split="train"):
    files = tf.io.gfile.glob(os.path.join(out_dir, f"{split}-*.tfrecord*"))
    gzip = files and files[0].endswith(".gz")
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, "GZIP" if gzip else "")]


def _named(examples, name: str):
    (example,) = [e for e in examples if e.features.feature["image_name"].bytes_list.value[0].decode() == name]
    return example


def _csv(path, rows, extra_column=False) -> str:
    header = "split,image_uri,label" + (",comment" if extra_column else "")
    lines = [header] + [",".join([s, f'"{u}"', lbl] + (["x"] if extra_column else [])) for s, u, lbl in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_our_example_encoding_is_what_tensorflow_parses():
    values = {"b": b"\x00\xff bytes", "empty": b"", "n": 300, "neg": -5, "zero": 0, "big": 2**40}
    parsed = tf.train.Example.FromString(schema.serialize_example(values)).features.feature
    assert parsed["b"].bytes_list.value == [b"\x00\xff bytes"] and parsed["empty"].bytes_list.value == [b""]
    assert [parsed[k].int64_list.value[0] for k in ("n", "neg", "zero", "big")] == [300, -5, 0, 2**40]


def test_tfrecorder_records_read_with_tfrecorders_own_reader_snippet(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 20, 3), dtype=np.uint8))
    rgba = Image.new("RGBA", (7, 5), (10, 200, 30, 128))
    palette = Image.new("P", (9, 4), 3)
    rows = [("TRAIN", _save(tmp_path / "rgb.png", rgb, "PNG"), "a"),
            ("TRAIN", _save(tmp_path / "rgba.png", rgba, "PNG"), "b"),
            ("TRAIN", _save(tmp_path / "palette.gif", palette, "GIF"), "b")]
    convert(_csv(tmp_path / "in.csv", rows), str(tmp_path / "out"), record_format="tfrecorder")
    files = tf.io.gfile.glob(str(tmp_path / "out" / "train-*"))
    assert all(f.endswith(".tfrecord.gz") for f in files)

    # TFRecorder's documented reader, unchanged.
    feature_spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "image_height": tf.io.FixedLenFeature([], tf.int64),
        "image_width": tf.io.FixedLenFeature([], tf.int64),
        "image_channels": tf.io.FixedLenFeature([], tf.int64),
        "image_name": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "split": tf.io.FixedLenFeature([], tf.string),
    }
    images = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        f = tf.io.parse_single_example(record, feature_spec)
        image = tf.reshape(tf.io.decode_raw(tf.io.decode_base64(f["image"]), tf.uint8),
                           [f["image_height"], f["image_width"], f["image_channels"]])
        images[f["image_name"].numpy().decode()] = (image.numpy(), int(f["label"]), f["split"].numpy())
    assert set(images) == {"rgb.png", "rgba.png", "palette.gif"}
    np.testing.assert_array_equal(images["rgb.png"][0], np.asarray(rgb))
    assert images["rgba.png"][0].shape == (5, 7, 3) and images["palette.gif"][0].shape == (4, 9, 3)
    assert [images[n][1] for n in ("rgb.png", "rgba.png")] == [0, 1]
    assert images["rgb.png"][2] == b"TRAIN"


def test_both_formats_give_the_trainer_the_same_images_and_labels(tmp_path, sample_images):
    prepare_csv(sample_images, str(tmp_path / "images.csv"))
    for record_format in ("jpeg", "tfrecorder"):
        convert(str(tmp_path / "images.csv"), str(tmp_path / record_format), record_format=record_format)
        assert detect_format(str(tmp_path / record_format)) == record_format
    batches = {f: list(make_dataset(str(tmp_path / f), "TRAIN", 32, batch_size=64)) for f in ("jpeg", "tfrecorder")}
    (jpeg_pixels, jpeg_labels), = batches["jpeg"]
    (raw_pixels, raw_labels), = batches["tfrecorder"]
    np.testing.assert_array_equal(jpeg_labels, raw_labels)
    # Same pixels up to the two JPEG decoders' rounding (TensorFlow's vs Pillow's) and downscaling (JPEGs >= 2x
    # the size decode at 1/2..1/8 in the DCT domain, raw pixels are area-averaged by the same factor).
    assert float(tf.reduce_mean(tf.abs(jpeg_pixels - raw_pixels))) < 3.0


def test_the_format_is_detected_from_the_records_when_summary_is_missing(tmp_path, records):
    import shutil

    shutil.copytree(records, tmp_path / "copy")
    os.remove(tmp_path / "copy" / "summary.json")
    assert detect_format(str(tmp_path / "copy")) == "jpeg"


@pytest.mark.parametrize(
    "name, make, expected_size",
    [
        ("webp.webp", lambda p: _save(p, Image.new("RGB", (30, 20), "red"), "WEBP"), (20, 30)),
        ("png-named.jpg", lambda p: _save(p, Image.new("RGB", (30, 20), "red"), "PNG"), (20, 30)),
        ("tiny.jpg", lambda p: _save(p, Image.new("RGB", (1, 1), "red"), "JPEG"), (1, 1)),
        ("gray.jpg", lambda p: _save(p, Image.new("L", (8, 6), 90), "JPEG"), (6, 8)),
        ("cmyk.jpg", lambda p: _save(p, Image.new("CMYK", (8, 6), (0, 50, 50, 0)), "JPEG"), (6, 8)),
    ],
)
def test_awkward_but_valid_images_arrive_as_rgb_jpeg(tmp_path, name, make, expected_size):
    make(tmp_path / name)
    plain = _save(tmp_path / "plain.jpeg", Image.new("RGB", (4, 4), "blue"), "JPEG")  # TRAIN needs two labels
    rows = [("TRAIN", str(tmp_path / name), "x"), ("TRAIN", plain, "y")]
    convert(_csv(tmp_path / "in.csv", rows), str(tmp_path / "out"))
    f = _named(_records(tmp_path / "out"), name).features.feature
    with Image.open(io.BytesIO(f["image_jpeg"].bytes_list.value[0])) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
        assert (image.height, image.width) == expected_size
    assert (f["image_height"].int64_list.value[0], f["image_width"].int64_list.value[0]) == expected_size


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    _save(tmp_path / "rotated.jpg", image, "JPEG", exif=exif.tobytes())
    _save(tmp_path / "other.jpg", image, "JPEG")
    convert(_csv(tmp_path / "in.csv", [("TRAIN", str(tmp_path / "rotated.jpg"), "a"),
                                       ("TRAIN", str(tmp_path / "other.jpg"), "b")]), str(tmp_path / "out"))
    example = _named(_records(tmp_path / "out"), "rotated.jpg")
    with Image.open(io.BytesIO(example.features.feature["image_jpeg"].bytes_list.value[0])) as stored:
        assert stored.size == (20, 40)
        assert stored.getexif().get(0x0112, 1) == 1


def test_uris_with_commas_and_extra_columns_are_read(tmp_path):
    path = _save(tmp_path / "a, b.jpg", Image.new("RGB", (8, 8), "red"), "JPEG")
    other = _save(tmp_path / "b.jpg", Image.new("RGB", (8, 8), "blue"), "JPEG")
    third = _save(tmp_path / "c.jpg", Image.new("RGB", (8, 8), "green"), "JPEG")
    rows = [("TEST", path, "a"), ("TRAIN", other, "b"), ("TRAIN", third, "a")]
    summary = convert(_csv(tmp_path / "in.csv", rows, extra_column=True), str(tmp_path / "out"))
    assert summary.good == 3
    (example,) = _records(tmp_path / "out", "test")
    assert example.features.feature["image_uri"].bytes_list.value[0].decode() == path


def test_dry_run_prints_dataflow_options_and_steps_and_touches_nothing(tmp_path, sample_images, capsys):
    prepare_csv(sample_images, str(tmp_path / "images.csv"))
    code = main(["convert", str(tmp_path / "images.csv"), "--output-dir", "gs://bucket/records",
                 "--runner", "DataflowRunner", "--project", "my-project", "--region", "europe-west4",
                 "--temp-location", "gs://bucket/tmp", "--sdk-container-image", "reg/catsdogs-components:1",
                 "--max-workers", "5", "--label", "team=ml", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    for expected in ("with DataflowRunner", "--project=my-project", "--region=europe-west4",
                     "--temp_location=gs://bucket/tmp", "--sdk_container_image=reg/catsdogs-components:1",
                     "--max_num_workers=5", "team=ml", "ReadCsv", "CheckRows", "Deduplicate", "WriteShards",
                     "WriteErrors", "job graph: "):
        assert expected in out
    assert os.listdir(tmp_path) == ["images.csv"]  # nothing staged, nothing written


def test_dataflow_needs_a_gcs_temp_location(tmp_path, sample_images, capsys):
    prepare_csv(sample_images, str(tmp_path / "images.csv"))
    assert main(["convert", str(tmp_path / "images.csv"), "--output-dir", str(tmp_path / "o"), "--runner",
                 "DataflowRunner", "--project", "p", "--region", "r", "--temp-location", "/tmp/x", "--dry-run"]) == 2
    assert "gs:// path" in capsys.readouterr().err


def test_pandas_accessor_keeps_tfrecorders_call_working(tmp_path, sample_images):
    prepare_csv(sample_images, str(tmp_path / "images.csv"))
    df = pd.read_csv(tmp_path / "images.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = df.tensorflow.to_tfr(output_dir=str(tmp_path / "out"), runner="DirectRunner",
                                       tfrecorder_wheel="/path/tfrecorder.whl")
    assert any("tfrecorder_wheel" in str(w.message) for w in caught)
    assert summary["good"] == len(df) and summary["format"] == "tfrecorder"
    assert len(_records(tmp_path / "out")) == summary["per_split"]["TRAIN"]
    with pytest.raises(InputError, match="missing column"):
        df.drop(columns=["label"]).tensorflow.to_tfr(output_dir=str(tmp_path / "o2"))
    with pytest.raises(TypeError, match="unexpected"):
        df.tensorflow.to_tfr(output_dir=str(tmp_path / "o3"), no_such_option=1)


def test_inspect_reports_counts_labels_and_writes_images(records, tmp_path, capsys):
    report = inspect_records(records, "train", num_records=2, output_dir=str(tmp_path / "png"))
    summary = schema.read_summary(records)
    assert "jpeg records" in report and "labels: 0=cats, 1=dogs" in report
    assert f"TRAIN {summary['per_split']['TRAIN']}" in report
    pngs = sorted(os.listdir(tmp_path / "png"))
    assert len(pngs) == 2 and all(p.startswith("train-") and p.endswith(".png") for p in pngs)
    with Image.open(tmp_path / "png" / pngs[0]) as image:
        assert image.mode == "RGB" and image.width > 100
    assert main(["inspect", records, "--split", "holdout"]) == 2
    assert "--split must be one of" in capsys.readouterr().err


@pytest.mark.slow
def test_training_reads_tfrecorder_records(tmp_path, sample_images):
    from components.evaluate.core import evaluate
    from components.train.core import TrainConfig, train

    prepare_csv(sample_images, str(tmp_path / "images.csv"))
    convert(str(tmp_path / "images.csv"), str(tmp_path / "data"), record_format="tfrecorder")
    train(str(tmp_path / "data"), str(tmp_path / "model"), TrainConfig(epochs=1, image_size=32, batch_size=16))
    result = evaluate(str(tmp_path / "model"), str(tmp_path / "data"))
    assert result.examples == schema.split_size(str(tmp_path / "data"), "TEST")
