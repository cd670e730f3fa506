"""The TFRecord schemas written by `convert` and read by training, evaluation and `inspect`.

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

`tfrecorder` records are exactly TFRecorder's, for readers written against it: `image` (URL-safe base64, with
padding, of the raw HxWx3 uint8 pixels), `image_height`, `image_width`, `image_channels` (always 3: RGBA and
palette images are converted, fixing TFRecorder's channel bug), `image_name`, `label`, `split`.

Beside the shards, the output folder holds `labels.json` (the ordered class names), `summary.json`,
`errors-00000-of-00001.csv` and `_catsdogs_manifest.json` (the files convert wrote there; see output.py).
Examples are encoded here without TensorFlow (tf.train.Example's wire format is small and stable), so Beam
workers never pay TensorFlow's import; tests check that TensorFlow parses them.
"""

from __future__ import annotations

import base64
import hashlib
import json

from components import storage
from components.contracts import LABELS_FILE, RECORD_FORMATS, SPLIT_PREFIX, SUMMARY_FILE
from components.protowire import field, varint

FORMATS = RECORD_FORMATS
__all__ = ["FORMATS", "LABELS_FILE", "SPLIT_PREFIX", "SUMMARY_FILE", "jpeg_example", "read_labels", "read_summary",
           "serialize_example", "shard_of", "shard_pattern", "split_size", "tfrecorder_example", "write_labels"]


def serialize_example(features: dict[str, bytes | int]) -> bytes:
    """A serialized tf.train.Example with one bytes or int64 value per feature."""
    entries = []
    for name, value in features.items():
        if isinstance(value, bytes):
            feature = field(1, field(1, value))  # Feature.bytes_list.value
        else:
            feature = field(3, field(1, varint(value)))  # Feature.int64_list.value, packed
        entries.append(field(1, field(1, name.encode()) + field(2, feature)))  # Features.feature map entry
    return field(1, b"".join(entries))  # Example.features


def jpeg_example(jpeg: bytes, height: int, width: int, uri: str, label_index: int, label: str, split: str) -> bytes:
    return serialize_example({
        "image_jpeg": jpeg,
        "image_height": height,
        "image_width": width,
        "image_channels": 3,
        "image_name": uri.rsplit("/", 1)[-1].encode(),
        "image_uri": uri.encode(),
        "label": label_index,
        "label_text": label.encode(),
        "split": split.encode(),
    })


def tfrecorder_example(pixels: bytes, height: int, width: int, uri: str, label_index: int, split: str) -> bytes:
    """TFRecorder's record: `pixels` are the raw HxWx3 uint8 bytes (PIL's Image.tobytes() of an RGB image)."""
    return serialize_example({
        "image": base64.urlsafe_b64encode(pixels),
        "image_height": height,
        "image_width": width,
        "image_channels": 3,
        "image_name": uri.rsplit("/", 1)[-1].encode(),
        "label": label_index,
        "split": split.encode(),
    })


def write_labels(output_dir: str, labels: list[str]) -> None:
    storage.write_text(storage.join(output_dir, LABELS_FILE), json.dumps(labels, indent=1) + "\n")


def read_labels(data_dir: str) -> list[str]:
    path = storage.join(data_dir, LABELS_FILE)
    if not storage.exists(path):
        from components.errors import InputError

        raise InputError(f"{path} not found: is {data_dir} the output folder of `catsdogs convert`?")
    return json.loads(storage.read_text(path))


def read_summary(data_dir: str) -> dict:
    """summary.json of a conversion ({} when the folder has none)."""
    path = storage.join(data_dir, SUMMARY_FILE)
    return json.loads(storage.read_text(path)) if storage.exists(path) else {}


def split_size(data_dir: str, split: str) -> int:
    """Records in one split, from summary.json (0 when the folder has no conversion summary)."""
    return read_summary(data_dir).get("per_split", {}).get(split, 0)


def shard_of(uri: str, shards: int) -> int:
    """The shard of a split's `shards` that holds an image (its image_uri as convert spells it): stable, so the same
    CSV gives the same files on every runner, and a reader can find one image's record without reading the rest."""
    return int.from_bytes(hashlib.blake2b(uri.encode("utf-8"), digest_size=8).digest(), "big") % shards


def shard_pattern(data_dir: str, split: str) -> str:
    return storage.join(data_dir, f"{SPLIT_PREFIX[split]}-*.tfrecord*")
