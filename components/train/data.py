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


def augment(pixels: tf.Tensor) -> tf.Tensor:
    """Random horizontal flip and a random crop of 90% of the side, resized back."""
    size = tf.shape(pixels)[0]
    pixels = tf.image.random_flip_left_right(pixels)
    crop = tf.cast(tf.cast(size, tf.float32) * 0.9, tf.int32)
    pixels = tf.image.random_crop(pixels, tf.stack([crop, crop, 3]))
    return tf.image.resize(pixels, tf.stack([size, size]))


def make_dataset(data_dir: str, split: str, image_size: int, batch_size: int, training: bool = False,
                 seed: int | None = None, workers: int = 1, augment_images: bool = False) -> tf.data.Dataset:
    """Batches of (float32 pixels [B, S, S, 3], int64 labels [B]) from one split.

    Shards are read interleaved, records decoded and resized in parallel, decoded images cached in memory
    after the first epoch (augmentation runs after the cache, so it differs every epoch), and batches
    prefetched. With several workers each reads its own files when there are enough of them, else every
    worker reads all and keeps its share of the records.
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
    known = schema.split_size(data_dir, split)
    if known and workers == 1:  # lets Keras show progress and stop warning that the input "ran out of data"
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(known))
    if augment_images:
        dataset = dataset.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE if len(files) >= workers else tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)
