"""tf.data input: TFRecord shards written by `convert` (either schema) -> batches of (pixels, label)."""

from __future__ import annotations

import tensorflow as tf

from components.convert import schema

FEATURES = {
    "jpeg": {
        "image_jpeg": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    },
    "tfrecorder": {
        "image": tf.io.FixedLenFeature([], tf.string),
        "image_height": tf.io.FixedLenFeature([], tf.int64),
        "image_width": tf.io.FixedLenFeature([], tf.int64),
        "image_channels": tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
    },
}


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> float32 [image_size, image_size, 3] in 0..255.

    Training, evaluation and the exported serving signature all call this, so serving sees exactly the
    pixels training saw.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.image.resize(image, [image_size, image_size])


def tfrecorder_pixels(features: dict[str, tf.Tensor]) -> tf.Tensor:
    """TFRecorder's reader: URL-safe base64 -> raw uint8 -> [height, width, channels]."""
    raw = tf.io.decode_raw(tf.io.decode_base64(features["image"]), tf.uint8)
    return tf.reshape(raw, tf.stack([features["image_height"], features["image_width"], features["image_channels"]]))


def record_files(data_dir: str, split: str) -> list[str]:
    return sorted(tf.io.gfile.glob(schema.shard_pattern(data_dir, split)))


def _compression(files: list[str]) -> str:
    return "GZIP" if files and files[0].endswith(".gz") else ""


def detect_format(data_dir: str) -> str:
    """"jpeg" or "tfrecorder": from summary.json, else from the features of the first record found."""
    recorded = schema.read_summary(data_dir).get("format")
    if recorded:
        return recorded
    for split in schema.SPLIT_PREFIX:
        files = record_files(data_dir, split)
        for record in tf.data.TFRecordDataset(files, compression_type=_compression(files)).take(1):
            keys = tf.train.Example.FromString(record.numpy()).features.feature.keys()
            return "jpeg" if "image_jpeg" in keys else "tfrecorder"
    raise FileNotFoundError(f"no TFRecords under {data_dir}")


def parse_fn(record_format: str, image_size: int):
    """A function: serialized record -> (float32 [S, S, 3] pixels in 0..255, int64 label)."""
    features_spec = FEATURES[record_format]

    def parse(record):
        features = tf.io.parse_single_example(record, features_spec)
        if record_format == "jpeg":
            pixels = decode_and_resize(features["image_jpeg"], image_size)
        else:
            pixels = tf.image.resize(tfrecorder_pixels(features), [image_size, image_size])
        return pixels, features["label"]

    return parse


def make_dataset(data_dir: str, split: str, image_size: int, batch_size: int, training: bool = False,
                 seed: int | None = None) -> tf.data.Dataset:
    """Batches of (float32 pixels [B, S, S, 3], int64 labels [B]) from one split.

    Training reads shards interleaved and shuffles; decoding and resizing run in parallel, the decoded
    images are cached in memory after the first epoch, and batches are prefetched.
    """
    files = record_files(data_dir, split)
    if not files:
        raise FileNotFoundError(f"no {split} records matching {schema.shard_pattern(data_dir, split)}")
    compression = _compression(files)
    shards = tf.data.Dataset.from_tensor_slices(files)
    if training:
        shards = shards.shuffle(len(files), seed=seed)
    records = shards.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training,
    )
    parse = parse_fn(detect_format(data_dir), image_size)
    dataset = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if training:
        dataset = dataset.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
