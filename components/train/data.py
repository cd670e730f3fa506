"""tf.data input: TFRecord shards written by `convert` (either schema) -> batches of (pixels, label)."""

from __future__ import annotations

import contextlib
import hashlib
import re

import tensorflow as tf

from components.convert import schema
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


# How much of an encoded file the orientation parser looks at: EXIF sits in the first segments (JPEG APP1,
# PNG eXIf before IDAT, WebP EXIF chunk), and IFD0's entries lie within a few hundred bytes of its start.
HEADER_BYTES = 1 << 17
MAX_SEGMENTS = 64  # segments/chunks walked before giving up (real files have fewer than 20 before the pixels)
MAX_IFD_ENTRIES = 128
ORIENTATION_TAG = 0x0112  # the EXIF tag conversion's PIL ImageOps.exif_transpose reads


def _u8(header: tf.Tensor, index) -> tf.Tensor:
    """Byte(s) at index (int32, clipped into the zero-padded header) as int32."""
    return tf.gather(header, tf.clip_by_value(index, 0, HEADER_BYTES - 1))


def _u16(header, index, little):
    a, b = _u8(header, index), _u8(header, index + 1)
    return tf.where(little, a + b * 256, a * 256 + b)


def _u32(header, index, little):
    low, high = _u16(header, index, little), _u16(header, index + 2, little)
    return tf.where(little, low + high * 65536, low * 65536 + high)


def _is(header, index, text: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(_u8(header, index + tf.range(len(text))), tf.constant(list(text), tf.int32)))


def _find_exif(header: tf.Tensor, kind: str, png_chunk: bytes = b"eXIf") -> tf.Tensor:
    """Offset of the TIFF header ("II*" / "MM*") of the file's EXIF block, or -1: walks JPEG segments, PNG
    chunks or WebP (RIFF) chunks from the start, as PIL does. For PNGs, the data of any chunk before IDAT."""

    def step(pos):
        if kind == "jpeg":  # FF xx LLLL; APP1 "Exif\0\0" holds the TIFF header; SOS (FF DA) starts the pixels
            marker = _u8(header, pos + 1)
            found = tf.logical_and(tf.equal(marker, 0xE1), _is(header, pos + 4, b"Exif\0\0"))
            stop = tf.logical_or(tf.not_equal(_u8(header, pos), 0xFF), tf.equal(marker, 0xDA))
            return found, pos + 10, stop, pos + 2 + _u16(header, pos + 2, False)
        if kind == "png":  # LLLL TYPE DATA CRC; eXIf holds the TIFF header; IDAT starts the pixels
            found = _is(header, pos + 4, png_chunk)
            return found, pos + 8, _is(header, pos + 4, b"IDAT"), pos + 12 + _u32(header, pos, False)
        # WebP: TYPE LLLL(little endian) DATA, padded to even; EXIF may start with "Exif\0\0" (as PIL allows)
        found = _is(header, pos, b"EXIF")
        start = tf.where(_is(header, pos + 8, b"Exif\0\0"), pos + 14, pos + 8)
        size = _u32(header, pos + 4, True)
        return found, start, tf.constant(False), pos + 8 + size + size % 2

    def body(i, pos, result):
        found, start, stop, following = step(pos)
        result = tf.where(found, start, result)
        done = tf.logical_or(found, stop)
        return i + 1, tf.where(done, tf.constant(HEADER_BYTES), following), result

    start = {"jpeg": 2, "png": 8, "webp": 12}[kind]
    _, _, result = tf.while_loop(
        lambda i, pos, result: tf.logical_and(i < MAX_SEGMENTS, pos < HEADER_BYTES - 16),
        body, (tf.constant(0), tf.constant(start), tf.constant(-1)),
    )
    return result


def _header(image_bytes: tf.Tensor) -> tf.Tensor:
    """The first HEADER_BYTES bytes as int32, zero-padded: reads past the end of a small file give 0."""
    head = tf.strings.substr(image_bytes, 0, HEADER_BYTES)
    padded = tf.strings.join([head, tf.strings.substr(tf.constant(bytes(HEADER_BYTES)), 0,
                                                      HEADER_BYTES - tf.strings.length(head))])
    return tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int32)


def exif_orientation(header: tf.Tensor, kind: str) -> tf.Tensor:
    """The EXIF orientation (1..8; 1 when there is none) of an encoded JPEG, PNG or WebP, in graph ops."""
    tiff = _find_exif(header, kind)
    little = tf.equal(_u8(header, tiff), 0x49)  # "II": little endian; "MM": big endian
    ifd = tiff + _u32(header, tiff + 4, little)
    count = tf.minimum(_u16(header, ifd, little), MAX_IFD_ENTRIES)
    entries = ifd + 2 + 12 * tf.range(MAX_IFD_ENTRIES)
    match = tf.logical_and(tf.range(MAX_IFD_ENTRIES) < count,
                           tf.equal(_u16(header, entries, little), ORIENTATION_TAG))
    value = tf.reduce_max(tf.where(match, _u16(header, entries + 8, little), 0))
    valid = tf.logical_and(tiff >= 0, tf.logical_and(value >= 2, value <= 8))
    return tf.where(valid, value, 1)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turns an image upright the way PIL's ImageOps.exif_transpose does for orientations 2..8."""
    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: tf.image.flip_left_right(image),  # 2
        lambda: tf.image.rot90(image, 2),  # 3
        lambda: tf.image.flip_up_down(image),  # 4
        lambda: tf.image.transpose(image),  # 5
        lambda: tf.image.rot90(image, 3),  # 6: 90 degrees clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), 2),  # 7: transverse
        lambda: tf.image.rot90(image, 1),  # 8: 90 degrees counter-clockwise
    ])


def _onto_white(rgba: tf.Tensor) -> tf.Tensor:
    """PIL's paste of RGBA onto a white RGB image with the alpha as mask, in float32 (0..255)."""
    rgba = tf.cast(rgba, tf.float32)
    alpha = rgba[..., 3:] / 255.0
    return rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)


def _jpeg_scale(image_bytes: tf.Tensor, image_size: int | None) -> tf.Tensor:
    """k for the largest DCT-domain downscale 2**k (1, 2, 4 or 8) that keeps the short side >= image_size."""
    if image_size is None:
        return tf.constant(0)
    short = tf.reduce_min(tf.io.extract_jpeg_shape(image_bytes)[:2])
    return tf.reduce_sum(tf.cast(short >= tf.constant([2, 4, 8]) * image_size, tf.int32))


def decode_upright_rgb(image_bytes: tf.Tensor, image_size: int | None = None) -> tf.Tensor:
    """Encoded image -> float32 [H, W, 3] in 0..255, normalised as conversion normalises (convert/images.py):
    EXIF orientation applied (JPEG, PNG, WebP), transparency flattened onto white (RGBA, grey+alpha and
    palette-with-transparency PNGs, WebP), grey and CMYK made RGB. JPEGs use libjpeg's accurate integer DCT,
    as PIL does; with image_size, a JPEG whose short side is at least 2x image_size is decoded at 1/2, 1/4 or
    1/8 scale in the DCT domain (a large photo decodes several times faster), keeping the side >= image_size.

    Known differences from PIL, all rare in photos: a GIF's transparent pixels come out black (TensorFlow's GIF
    decoder drops the transparency), a 16-bit PNG is scaled to 8 bits where PIL clips, and a grey or RGB PNG's
    tRNS colour key is ignored by both."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    magic = tf.strings.substr(image_bytes, 0, 4)
    riff = tf.logical_and(tf.equal(magic, b"RIFF"), tf.equal(tf.strings.substr(image_bytes, 8, 4), b"WEBP"))

    def jpeg():
        decoded = tf.switch_case(_jpeg_scale(image_bytes, image_size), [
            lambda r=r: tf.io.decode_jpeg(image_bytes, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
            for r in (1, 2, 4, 8)
        ])
        return apply_orientation(tf.cast(decoded, tf.float32), exif_orientation(_header(image_bytes), "jpeg"))

    def png():
        header = _header(image_bytes)
        # Flattened like PIL's RGBA, LA and P-with-"transparency" (colour types 6, 4, and 3 with a tRNS chunk).
        colour_type = header[25]
        flatten = tf.logical_or(tf.logical_or(tf.equal(colour_type, 6), tf.equal(colour_type, 4)),
                                tf.logical_and(tf.equal(colour_type, 3), _find_exif(header, "png", b"tRNS") >= 0))
        image = tf.cond(flatten, lambda: _onto_white(tf.io.decode_png(image_bytes, channels=4)),
                        lambda: tf.cast(tf.io.decode_png(image_bytes, channels=3), tf.float32))
        return apply_orientation(image, exif_orientation(header, "png"))

    def webp():
        image = _onto_white(tf.io.decode_webp(image_bytes, channels=4)[0])  # [frames, H, W, 4]: the first
        return apply_orientation(image, exif_orientation(_header(image_bytes), "webp"))

    def gif():  # the first frame
        return tf.cast(tf.io.decode_gif(image_bytes)[0], tf.float32)

    def other():  # BMP; anything else fails here with TensorFlow's message
        return tf.cast(tf.io.decode_image(image_bytes, channels=3, expand_animations=False), tf.float32)

    image = tf.case([
        (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"), jpeg),
        (tf.equal(magic, b"\x89PNG"), png),
        (riff, webp),
        (tf.equal(magic, b"GIF8"), gif),
    ], default=other, exclusive=False)
    image.set_shape([None, None, 3])
    return image


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> float32 [image_size, image_size, 3], whole numbers in 0..255.

    Training, evaluation, the server and the exported serving signature all call this one function, so
    serving sees exactly the pixels training saw. The result is rounded to whole numbers so that training can
    cache it as uint8 (4x smaller) without changing a single value.
    """
    image = decode_upright_rgb(image_bytes, image_size)
    return tf.round(tf.image.resize(image, [image_size, image_size]))


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


CACHE_MODES = ("auto", "memory", "none")  # or a folder: a disk cache
# auto caches a split's decoded pixels in memory when they fit this budget (uint8, image_size^2 * 3 bytes
# each: 1 GiB holds ~15,900 images at 150 px, ~7,100 at 224 px), and otherwise streams: records are re-read
# and re-decoded every epoch, so memory stays flat however many images there are.
CACHE_BUDGET_BYTES = 1 << 30
SHUFFLE_BYTES = 256 << 20  # the shuffle buffer holds at most 2048 images or this many bytes of them


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
                 cache: str = "auto") -> tf.data.Dataset:
    """Batches of (float32 pixels [B, S, S, 3], int64 labels [B]) from one split.

    Shards are read interleaved and records decoded and resized in parallel into uint8 pixels (exactly
    decode_and_resize's values). `cache`: "auto" keeps them in memory after the first epoch when the split
    fits CACHE_BUDGET_BYTES and streams otherwise; "memory" always caches, "none" never, a folder caches on
    disk. Shuffling, augmentation (so it differs every epoch) and the cast to float32 come after the cache,
    and batches are prefetched. With several workers each reads its own files when there are enough of them,
    else every worker reads all and keeps its share of the records.
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
    dataset = records.map(lambda record: _as_uint8(*parse(record)), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=not training)
    known = schema.split_size(data_dir, split)
    mode = cache_mode(cache, known, image_size)
    if mode == "memory":
        dataset = dataset.cache()
    elif mode != "none":
        dataset = dataset.cache(_disk_cache_file(mode, files, split, image_size))
    if training:
        buffer = max(64, min(2048, SHUFFLE_BYTES // (image_size * image_size * 3)))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if known and workers == 1:  # lets Keras show progress and stop warning that the input "ran out of data"
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(known))
    if augment_images:
        dataset = dataset.map(lambda x, y: (augment(tf.cast(x, tf.float32)), y), num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size)
    else:
        dataset = dataset.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE if len(files) >= workers else tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def _as_uint8(pixels: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """decode_and_resize's whole-number float pixels as uint8 (4x less to cache and shuffle, same values)."""
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8), label
