"""`catsdogs inspect`: what is in a folder of converted TFRecords, and a look at a few of its images."""

from __future__ import annotations

import base64
import io

import tensorflow as tf
from PIL import Image

from components import storage
from components.convert import schema
from components.errors import InputError
from components.train.data import detect_format, record_files


def _records(data_dir: str, split: str) -> tf.data.Dataset:
    files = record_files(data_dir, split)
    return tf.data.TFRecordDataset(files, compression_type="GZIP" if files and files[0].endswith(".gz") else "")


def _value(feature):
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value
    return values[0] if len(values) == 1 else list(values)


def _image(features: dict, record_format: str) -> Image.Image:
    if record_format == "jpeg":
        return Image.open(io.BytesIO(features["image_jpeg"]))
    size = (features["image_width"], features["image_height"])
    return Image.frombytes("RGB", size, base64.urlsafe_b64decode(features["image"]))


def inspect_records(data_dir: str, split: str = "TRAIN", num_records: int = 3, output_dir: str | None = None) -> str:
    """A report of the folder (format, label map, record counts) and of the first records of one split;
    with output_dir, those records' images are written there as PNGs."""
    split = split.upper()
    if split not in schema.SPLIT_PREFIX:
        raise InputError(f"--split must be one of {', '.join(s.lower() for s in schema.SPLIT_PREFIX)}, got {split!r}")
    labels = schema.read_labels(data_dir)
    record_format = detect_format(data_dir)
    counts = {s: sum(1 for _ in _records(data_dir, s)) for s in schema.SPLIT_PREFIX}
    lines = [f"{data_dir}: {record_format} records", "labels: " + ", ".join(f"{i}={n}" for i, n in enumerate(labels)),
             "records: " + ", ".join(f"{s} {n}" for s, n in counts.items())]
    for i, record in enumerate(_records(data_dir, split).take(num_records)):
        features = {k: _value(v) for k, v in tf.train.Example.FromString(record.numpy()).features.feature.items()}
        image = _image(features, record_format)
        label = labels[features["label"]]
        name = features["image_name"].decode()
        lines.append(f"{split} #{i}: {name} label {features['label']} ({label}) "
                     f"{features['image_height']}x{features['image_width']}x{features['image_channels']}")
        if output_dir:
            path = storage.join(output_dir, f"{split.lower()}-{i:03d}-{label}.png")
            png = io.BytesIO()
            image.save(png, format="PNG")
            storage.write_bytes(path, png.getvalue())
            lines.append(f"  wrote {path}")
    return "\n".join(lines)
