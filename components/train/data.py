"""tf.data input: TFRecord shards written by `convert` -> batches of (pixels, label)."""

from __future__ import annotations

import tensorflow as tf

from components.convert import schema

JPEG_FEATURES = {
    "image_jpeg": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> float32 [image_size, image_size, 3] in 0..255.

    Training, evaluation and the exported serving signature all call this, so serving sees exactly the
    pixels training saw.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.image.resize(image, [image_size, image_size])


def record_files(data_dir: str, split: str) -> list[str]:
    return sorted(tf.io.gfile.glob(schema.shard_pattern(data_dir, split)))


def _compression(files: list[str]) -> str:
    return "GZIP" if files and files[0].endswith(".gz") else ""


def raw_records(data_dir: str, split: str) -> tf.data.Dataset:
    """(encoded image bytes, label index) for every record of a split, in file order."""
    files = record_files(data_dir, split)
    records = tf.data.TFRecordDataset(files, compression_type=_compression(files))
    parsed = records.map(lambda r: tf.io.parse_single_example(r, JPEG_FEATURES), num_parallel_calls=tf.data.AUTOTUNE)
    return parsed.map(lambda f: (f["image_jpeg"], f["label"]))


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

    def parse(record):
        features = tf.io.parse_single_example(record, JPEG_FEATURES)
        return decode_and_resize(features["image_jpeg"], image_size), features["label"]

    dataset = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if training:
        dataset = dataset.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
