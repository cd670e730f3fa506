"""tf.data input: TFRecord shards written by `convert` (either schema) -> batches of (pixels, label)."""

from __future__ import annotations

import contextlib
import hashlib
import re

import tensorflow as tf

from components.contracts import HELD_OUT_SPLITS
from components.convert import schema
from components.decode import decode_and_resize
from components.errors import InputError

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


def _box_downscale(pixels: tf.Tensor, image_size: int) -> tf.Tensor:
    """Raw pixels averaged down by 2, 4 or 8 as decode_jpeg's DCT-domain scaling does for a JPEG of that size
    (the same rule as _jpeg_scale), so both record formats give the trainer nearly the same pixels."""
    shape = tf.shape(pixels)[:2]
    factor = tf.bitwise.left_shift(1, tf.reduce_sum(tf.cast(tf.reduce_min(shape) >= tf.constant([2, 4, 8]) * image_size,
                                                            tf.int32)))
    return tf.image.resize(pixels, (shape + factor - 1) // factor, method="area")


def tfrecorder_pixels(features: dict[str, tf.Tensor]) -> tf.Tensor:
    """TFRecorder's reader: URL-safe base64 -> raw uint8 -> [height, width, channels]."""
    raw = tf.io.decode_raw(tf.io.decode_base64(features["image"]), tf.uint8)
    return tf.reshape(raw, tf.stack([features["image_height"], features["image_width"], features["image_channels"]]))


SHARD_NAME = re.compile(r"^(?P<prefix>[a-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord(?P<gz>\.gz)?$")


def record_files(data_dir: str, split: str) -> list[str]:
    """The split's shards, checked to be one complete set (NNNNN-of-MMMMM for every index, one compression):
    a shard left over from another conversion, or a missing one, is an InputError naming it."""
    files = sorted(tf.io.gfile.glob(schema.shard_pattern(data_dir, split)))
    names = {f: SHARD_NAME.match(f.rsplit("/", 1)[-1]) for f in files}
    for f, match in names.items():
        if not match:
            raise InputError(f"{f}: unexpected file among the {split} shards (not NNNNN-of-MMMMM.tfrecord[.gz]); "
                             f"move it out of {data_dir} or re-run `catsdogs convert`")
    if files:
        first = names[files[0]]
        expected = int(first["count"])
        for f, match in names.items():
            if int(match["count"]) != expected or match["gz"] != first["gz"]:
                raise InputError(f"{f}: unexpected extra shard: it does not belong to the set "
                                 f"{files[0].rsplit('/', 1)[-1]} starts (a leftover of another conversion?); "
                                 f"move it out of {data_dir} or re-run `catsdogs convert`")
        missing = sorted(set(range(expected)) - {int(m["index"]) for m in names.values()})
        if missing:
            raise InputError(f"{data_dir}: {split} shard {missing[0]:05d} of {expected:05d} is missing; "
                             f"re-run `catsdogs convert`")
    return files


def _compression(files: list[str]) -> str:
    return "GZIP" if files and files[0].endswith(".gz") else ""


def corrupt_shards(files: list[str]) -> list[str]:
    """The shards whose records cannot all be read (CRC mismatch, truncation, bad gzip), each with the reason."""
    bad = []
    for f in files:
        try:
            for _ in tf.data.TFRecordDataset(f, compression_type=_compression([f])):
                pass
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError) as e:
            bad.append(f"{f} ({e.message.splitlines()[0]})")
    return bad


@contextlib.contextmanager
def shard_errors(data_dir: str):
    """Turns TensorFlow's DataLossError (which names a record offset, not a file) into an InputError that
    names the corrupt shard(s)."""
    try:
        yield
    except tf.errors.DataLossError as e:
        files = [f for split in schema.SPLIT_PREFIX for f in tf.io.gfile.glob(schema.shard_pattern(data_dir, split))]
        bad = corrupt_shards(files) or [f"a shard under {data_dir}: {e.message.splitlines()[0]}"]
        raise InputError(f"corrupt TFRecord shard: {'; '.join(bad)}; re-run `catsdogs convert`") from e


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
            pixels = decode_and_resize(features["image_jpeg"], image_size, converted=True)
        else:
            pixels = tf.round(tf.image.resize(_box_downscale(tfrecorder_pixels(features), image_size),
                                              [image_size, image_size]))
        return pixels, features["label"]

    return parse


def augment(pixels: tf.Tensor) -> tf.Tensor:
    """Random horizontal flip and a random crop of 90% of the side, resized back."""
    size = tf.shape(pixels)[0]
    pixels = tf.image.random_flip_left_right(pixels)
    crop = tf.cast(tf.cast(size, tf.float32) * 0.9, tf.int32)
    pixels = tf.image.random_crop(pixels, tf.stack([crop, crop, 3]))
    return tf.image.resize(pixels, tf.stack([size, size]))


CACHE_MODES = ("auto", "memory", "none")  # or a folder: a disk cache
# auto caches a split's decoded pixels in memory when they fit this budget (uint8, image_size^2 * 3 bytes
# each: 1 GiB holds ~15,900 images at 150 px, ~7,100 at 224 px), and otherwise streams: records are re-read
# and re-decoded every epoch, so memory stays flat however many images there are.
CACHE_BUDGET_BYTES = 1 << 30
# Shuffling happens twice: encoded records before decoding (up to 2048 of them or SHUFFLE_BYTES: cheap to fill,
# so the first batch does not wait for thousands of decodes and decoding overlaps training from the first
# step), and decoded images after the cache (a smaller buffer, so epochs differ).
SHUFFLE_BYTES = 256 << 20
DECODED_SHUFFLE = 256


def cache_mode(cache: str, records: int, image_size: int) -> str:
    """"memory", "none" or a folder, for the cache setting and a split of `records` images."""
    if cache != "auto":
        return cache
    return "memory" if 0 < records * image_size * image_size * 3 <= CACHE_BUDGET_BYTES else "none"


def _disk_cache_file(cache_dir: str, files: list[str], split: str, image_size: int) -> str:
    """A cache file named after what it holds: the shards (names and sizes) and the image size, so a cache
    of other data or another size is never read back."""
    digest = hashlib.sha256(repr([(f, tf.io.gfile.stat(f).length) for f in files]).encode()).hexdigest()[:16]
    tf.io.gfile.makedirs(cache_dir)
    return f"{cache_dir.rstrip('/')}/{split.lower()}-{image_size}px-{digest}"


def make_dataset(data_dir: str, split: str, image_size: int, batch_size: int, training: bool = False,
                 seed: int | None = None, workers: int = 1, augment_images: bool = False,
                 cache: str = "auto", repeat: bool = False) -> tf.data.Dataset:
    """Batches of (float32 pixels [B, S, S, 3], int64 labels [B]) from one split.

    Shards are read interleaved, encoded records shuffled (training), then decoded and resized in parallel
    into uint8 pixels (exactly decode_and_resize's values). `cache`: "auto" keeps them in memory after the
    first epoch when the split fits CACHE_BUDGET_BYTES and streams otherwise; "memory" always caches, "none"
    never, a folder caches on disk. A second, smaller shuffle, augmentation (so it differs every epoch) and
    the cast to float32 come after the cache, and batches are prefetched. With several workers each reads its
    own files when there are enough of them, else every worker reads all and keeps its share of the records.
    `repeat`: endless (after the cache), for a caller that counts its steps: the workers of a multi-node run
    hold different numbers of records, and each must take the same number of full steps (see core.train).
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
    known = schema.split_size(data_dir, split)
    if training:
        record_bytes = sum(tf.io.gfile.stat(f).length for f in files) / max(known, 1)
        records = records.shuffle(int(max(64, min(2048, SHUFFLE_BYTES // max(record_bytes, 1)))), seed=seed,
                                  reshuffle_each_iteration=True)
    parse = parse_fn(detect_format(data_dir), image_size)
    dataset = records.map(lambda record: _as_uint8(*parse(record)), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=not training)
    mode = cache_mode(cache, known, image_size)
    if mode == "memory":
        dataset = dataset.cache()
    elif mode != "none":
        dataset = dataset.cache(_disk_cache_file(mode, files, split, image_size))
    if repeat:
        dataset = dataset.repeat()
    if training:
        buffer = max(16, min(DECODED_SHUFFLE, SHUFFLE_BYTES // (image_size * image_size * 3)))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if known and workers == 1 and not repeat:  # lets Keras show progress, stops its "ran out of data" warning
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(known))
    if augment_images:
        dataset = dataset.map(lambda x, y: (augment(tf.cast(x, tf.float32)), y), num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size)
    else:
        dataset = dataset.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.FILE if len(files) >= workers else policy.DATA
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def _as_uint8(pixels: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """decode_and_resize's whole-number float pixels as uint8 (4x less to cache and shuffle, same values)."""
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8), label


def encoded_images(data_dir: str, split: str, as_sent: bool = False) -> tf.data.Dataset:
    """A split's images as encoded bytes: `jpeg` records' own JPEGs; `tfrecorder` records' pixels as PNG
    (lossless: the serving check compares the server's answers with the model's on the same pixels) or, with
    `as_sent`, as the JPEG (quality 95, alpha dropped) a client sends. The drift baseline uses that: the server
    decodes a JPEG at a DCT scale, which smooths chroma, so as PNG the baseline's colourfulness was ~2 higher (of
    ~87) and its pixels ~4 levels off (measured, 60 sample photos); at quality 95 both are ten times smaller."""
    record_format = detect_format(data_dir)
    files = record_files(data_dir, split)
    spec = FEATURES[record_format]

    def encoded(record):
        features = tf.io.parse_single_example(record, spec)
        if record_format == "jpeg":
            return features["image_jpeg"]
        pixels = tfrecorder_pixels(features)
        return tf.io.encode_jpeg(pixels[..., :3], quality=95) if as_sent else tf.io.encode_png(pixels)

    records = tf.data.TFRecordDataset(files, compression_type=_compression(files))
    return records.map(encoded, num_parallel_calls=tf.data.AUTOTUNE)


def held_out_images(data_dir: str, count: int) -> list[bytes]:
    """Up to `count` encoded images (encoded_images) of a TFRecord folder's held-out split (TEST, else
    VALIDATION). The serving check sends them, and training writes them into the SavedModel as warm-up records
    (components/warmup.py)."""
    for split in HELD_OUT_SPLITS:
        if not record_files(data_dir, split):
            continue
        images = [image.numpy() for image in encoded_images(data_dir, split).take(count)]
        if images:  # a split with no records still has its (empty) shard: take the next held-out split
            return images
    return []
