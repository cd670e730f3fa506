"""The TFRecord schema written by `convert` and read by training, evaluation and `inspect`.

`jpeg` records (the default) hold the image as JPEG bytes:

| feature          | type   | value                                             |
|------------------|--------|---------------------------------------------------|
| image_jpeg       | bytes  | the JPEG file (RGB)                               |
| image_height     | int64  | pixels                                            |
| image_width      | int64  | pixels                                            |
| image_channels   | int64  | always 3                                          |
| image_name       | bytes  | basename of the source image                      |
| image_uri        | bytes  | where the image came from                         |
| label            | int64  | index into labels.json (labels sorted, 0..K-1)    |
| label_text       | bytes  | the label itself                                  |
| split            | bytes  | TRAIN, VALIDATION or TEST                         |

Beside the shards, the output folder holds `labels.json` (the ordered class names) and `summary.json`.
"""

from __future__ import annotations

import json

from components import storage

LABELS_FILE = "labels.json"
SUMMARY_FILE = "summary.json"
SPLIT_PREFIX = {"TRAIN": "train", "VALIDATION": "validation", "TEST": "test"}


def jpeg_example(jpeg: bytes, height: int, width: int, uri: str, label_index: int, label: str, split: str) -> bytes:
    """One serialized tf.train.Example in the `jpeg` schema."""
    import tensorflow as tf

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    features = {
        "image_jpeg": _bytes(jpeg),
        "image_height": _int(height),
        "image_width": _int(width),
        "image_channels": _int(3),
        "image_name": _bytes(uri.rsplit("/", 1)[-1].encode()),
        "image_uri": _bytes(uri.encode()),
        "label": _int(label_index),
        "label_text": _bytes(label.encode()),
        "split": _bytes(split.encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_labels(output_dir: str, labels: list[str]) -> None:
    storage.write_text(storage.join(output_dir, LABELS_FILE), json.dumps(labels, indent=1) + "\n")


def read_labels(data_dir: str) -> list[str]:
    path = storage.join(data_dir, LABELS_FILE)
    if not storage.exists(path):
        from components.errors import InputError

        raise InputError(f"{path} not found: is {data_dir} the output folder of `catsdogs convert`?")
    return json.loads(storage.read_text(path))


def split_size(data_dir: str, split: str) -> int:
    """Records in one split, from summary.json (0 when the folder has no conversion summary)."""
    path = storage.join(data_dir, SUMMARY_FILE)
    if not storage.exists(path):
        return 0
    return json.loads(storage.read_text(path))["per_split"].get(split, 0)


def shard_pattern(data_dir: str, split: str) -> str:
    return storage.join(data_dir, f"{SPLIT_PREFIX[split]}-*.tfrecord*")
