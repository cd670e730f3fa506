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


# Where the orientation parser looks: EXIF sits in the first segments (JPEG APP1, right after SOI or JFIF's
# APP0; PNG eXIf before IDAT; WebP EXIF chunk), found within the first HEADER_BYTES (searching 64 KiB cost
# more than the JPEG decode of a 150 px training image, measured); IFD0 (offset 8 in every writer we know) is
# read from a window of TIFF_BYTES after the TIFF header (entries beyond it are not seen).
HEADER_BYTES = 1 << 13
TIFF_BYTES = 1024
MAX_IFD_ENTRIES = 64
ORIENTATION_TAG = 0x0112  # the EXIF tag conversion's PIL ImageOps.exif_transpose reads
NOT_FOUND = 1 << 30
# The parser uses no loops and few ops (tf.while_loop and tf.switch_case inside tf.data's map made decoding
# several times slower, measured): blocks are found with a substring split, the IFD read with one gather.


def _find(text: tf.Tensor, pattern: bytes) -> tf.Tensor:
    """Offset of the first occurrence of pattern in the string text, or NOT_FOUND: the length of the first
    piece of one raw split (tf.strings.split's RaggedTensor added several ops, and a vectorised byte compare of
    8 KiB took longer than a 150 px JPEG decode, measured)."""
    pieces = tf.raw_ops.StringSplitV2(input=tf.reshape(text, [1]), sep=pattern, maxsplit=1).values
    length = tf.strings.length(text)
    first = tf.concat([tf.strings.length(pieces), tf.reshape(length, [1])], 0)[0]  # no pieces: empty text
    return tf.where(first < length, first, NOT_FOUND)


def _substr(text: tf.Tensor, offset: tf.Tensor, size: int) -> tf.Tensor:
    """Up to size bytes from offset; empty (not an error) when offset is past the end."""
    return tf.strings.substr(text, tf.clip_by_value(offset, 0, tf.strings.length(text)), size)


def _bytes_at(image_bytes: tf.Tensor, offset: tf.Tensor, size: int) -> tf.Tensor:
    """size bytes from offset as int32, zero-padded past the end (offset clipped into the file)."""
    window = tf.strings.join([_substr(image_bytes, offset, size), bytes(size)])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(window, 0, size), tf.uint8), tf.int32)


class _Header:
    """What the decoder needs to know before decoding: the format (from the magic bytes) and where EXIF is."""

    def __init__(self, image_bytes: tf.Tensor):
        self.image_bytes = image_bytes
        self.head = tf.strings.substr(image_bytes, 0, HEADER_BYTES)
        magic = tf.strings.substr(image_bytes, 0, 4)
        self.jpeg = tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8")
        self.png = tf.equal(magic, b"\x89PNG")
        self.webp = tf.logical_and(tf.equal(magic, b"RIFF"),
                                   tf.equal(_substr(image_bytes, tf.constant(8), 4), b"WEBP"))
        self.gif = tf.equal(magic, b"GIF8")

    def png_chunk_before_pixels(self, chunk: bytes) -> tf.Tensor:
        """Offset of a PNG chunk's type field when the chunk comes before the first IDAT, else NOT_FOUND (an
        empty search, so nearly free, when the file is not a PNG)."""
        head = tf.where(self.png, self.head, "")
        position = _find(head, chunk)
        return tf.where(position < _find(head, b"IDAT"), position, NOT_FOUND)

    def jpeg_exif_tiff(self) -> tf.Tensor:
        """Offset of the TIFF header ("II*" / "MM*") of a JPEG's APP1 "Exif\\0\\0" segment, or NOT_FOUND."""
        exif = _find(tf.where(self.jpeg, self.head, ""), b"Exif\x00\x00")
        app1 = tf.equal(_substr(self.head, exif - 4, 2), b"\xff\xe1")
        return tf.where(tf.logical_and(exif < NOT_FOUND, app1), exif + 6, NOT_FOUND)  # FF E1 LLLL "Exif\0\0" TIFF

    def other_exif_tiff(self) -> tf.Tensor:
        """The same for PNG's eXIf chunk and WebP's EXIF chunk (with or without "Exif\\0\\0", after the pixels,
        so the whole file is searched); NOT_FOUND for other formats. No tf.cond: the search a format does not
        need runs on an empty string."""
        png = self.png_chunk_before_pixels(b"eXIf") + 4
        chunk = _find(tf.where(self.webp, self.image_bytes, ""), b"EXIF") + 8
        webp = tf.where(tf.equal(_substr(self.image_bytes, chunk, 6), b"Exif\x00\x00"), chunk + 6, chunk)
        return tf.where(self.png, png, tf.where(self.webp, webp, NOT_FOUND))

    def orientation(self, tiff: tf.Tensor) -> tf.Tensor:
        """The EXIF orientation 1..8 in the TIFF block at offset tiff (1 when there is none or it is not 2..8)."""
        window = _bytes_at(self.image_bytes, tiff, TIFF_BYTES)
        mark = _substr(self.image_bytes, tiff, 4)
        little = tf.equal(mark, b"II*\x00")  # little endian; "MM\0*": big endian
        tiff_ok = tf.logical_and(tiff < NOT_FOUND, tf.logical_or(little, tf.equal(mark, b"MM\x00*")))
        words = tf.where(little, window[:-1] + window[1:] * 256, window[:-1] * 256 + window[1:])  # u16 at each offset
        ifd = tf.where(little, words[4] + words[6] * 65536, words[4] * 65536 + words[6])
        last = TIFF_BYTES - 2  # the last index of words
        ifd_ok = tf.logical_and(ifd >= 8, ifd < last)
        ifd = tf.where(ifd_ok, ifd, 8)
        entries = ifd + 2 + 12 * tf.range(MAX_IFD_ENTRIES)  # tag(2) type(2) count(4) value(4)
        match = tf.logical_and(tf.logical_and(tf.range(MAX_IFD_ENTRIES) < tf.gather(words, ifd), entries + 8 <= last),
                               tf.equal(tf.gather(words, tf.minimum(entries, last)), ORIENTATION_TAG))
        value = tf.reduce_max(tf.where(match, tf.gather(words, tf.minimum(entries + 8, last)), 0))
        valid = tf.logical_and(tf.logical_and(tiff_ok, ifd_ok), tf.logical_and(value >= 2, value <= 8))
        return tf.where(valid, value, 1)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turns an image upright the way PIL's ImageOps.exif_transpose does for orientations 2..8, as an optional
    transpose then optional flips (5 transpose, 6 = 5 + flip columns = 90 degrees clockwise, 7 = 5 + both =
    transverse, 8 = 5 + flip rows = 90 counter-clockwise; 2 columns, 3 both = 180 degrees, 4 rows)."""
    transpose = orientation >= 5
    flip_rows = tf.reduce_any(tf.equal(orientation, [3, 4, 7, 8]))
    flip_columns = tf.reduce_any(tf.equal(orientation, [2, 3, 6, 7]))
    image = tf.transpose(image, tf.where(transpose, [1, 0, 2], [0, 1, 2]))
    return tf.reverse(image, tf.boolean_mask(tf.constant([0, 1]), tf.stack([flip_rows, flip_columns])))


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


def decode_upright_rgb(image_bytes: tf.Tensor, image_size: int | None = None, converted: bool = False
                       ) -> tf.Tensor:
    """Encoded image -> float32 [H, W, 3] in 0..255, normalised as conversion normalises (convert/images.py):
    EXIF orientation applied (JPEG, PNG, WebP), transparency flattened onto white (RGBA, grey+alpha and
    palette-with-transparency PNGs, WebP), grey and CMYK made RGB. JPEGs use libjpeg's accurate integer DCT,
    as PIL does; with image_size, a JPEG whose short side is at least 2x image_size is decoded at 1/2, 1/4 or
    1/8 scale in the DCT domain (a large photo decodes several times faster), keeping the side >= image_size.

    converted=True is for the JPEGs `convert` wrote: RGB and upright by construction (conversion re-encodes
    every image that has an EXIF orientation other than 1, or transparency, or is not an RGB JPEG), so the
    format dispatch and EXIF search, no-ops on them, are skipped; tests/test_decode.py checks both give the
    same pixels on converted records.

    Known differences from PIL, all rare in photos: a GIF's transparent pixels come out black (TensorFlow's GIF
    decoder drops the transparency), a 16-bit PNG is scaled to 8 bits where PIL clips, and a grey or RGB PNG's
    tRNS colour key is ignored by both."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    jpeg = [lambda r=r: tf.cast(tf.io.decode_jpeg(image_bytes, channels=3, ratio=r, dct_method="INTEGER_ACCURATE"),
                                tf.float32) for r in (1, 2, 4, 8)]
    if converted:
        image = tf.switch_case(_jpeg_scale(image_bytes, image_size), jpeg)
        image.set_shape([None, None, 3])
        return image
    header = _Header(image_bytes)

    def png():
        # Flattened like PIL's RGBA, LA and P-with-"transparency" (colour types 6, 4, and 3 with a tRNS chunk);
        # other PNGs keep their RGB (alpha taken as opaque: TensorFlow makes one from a grey/RGB tRNS key).
        colour_type = _bytes_at(image_bytes, tf.constant(25), 1)[0]  # IHDR colour type
        flatten = tf.logical_or(tf.logical_or(tf.equal(colour_type, 6), tf.equal(colour_type, 4)), tf.logical_and(
            tf.equal(colour_type, 3), header.png_chunk_before_pixels(b"tRNS") < NOT_FOUND))
        rgba = tf.io.decode_png(image_bytes, channels=4)
        return _onto_white(tf.concat([rgba[..., :3], tf.where(flatten, rgba[..., 3:], 255)], axis=-1))

    # One flat switch and the EXIF parse outside it: ops inside tf.cond/switch_case branches, and nested
    # control flow, ran several times slower inside tf.data (measured), so the branches only decode.
    # extract_jpeg_shape fails on other formats: they get a tiny JPEG's shape instead.
    shape_of = tf.where(header.jpeg, image_bytes, tf.io.encode_jpeg(tf.zeros([8, 8, 1], tf.uint8)))
    index = tf.where(header.jpeg, _jpeg_scale(shape_of, image_size),
                     tf.where(header.png, 4, tf.where(header.webp, 5, tf.where(header.gif, 6, 7))))
    image = tf.switch_case(index, [
        *jpeg,
        png,
        lambda: _onto_white(tf.io.decode_webp(image_bytes, channels=4)[0]),  # [frames, H, W, 4]: the first
        lambda: tf.cast(tf.io.decode_gif(image_bytes)[0], tf.float32),  # the first frame
        # BMP; anything else fails here with TensorFlow's message
        lambda: tf.cast(tf.io.decode_image(image_bytes, channels=3, expand_animations=False), tf.float32),
    ])
    image.set_shape([None, None, 3])
    tiff = tf.where(header.jpeg, header.jpeg_exif_tiff(), header.other_exif_tiff())
    return apply_orientation(image, header.orientation(tiff))


def decode_and_resize(image_bytes: tf.Tensor, image_size: int, converted: bool = False) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> float32 [image_size, image_size, 3], whole numbers in 0..255.

    Training, evaluation, the server and the exported serving signature all call this one function, so
    serving sees exactly the pixels training saw. The result is rounded to whole numbers so that training can
    cache it as uint8 (4x smaller) without changing a single value. converted: see decode_upright_rgb.
    """
    image = decode_upright_rgb(image_bytes, image_size, converted)
    return tf.round(tf.image.resize(image, [image_size, image_size]))


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
                 cache: str = "auto") -> tf.data.Dataset:
    """Batches of (float32 pixels [B, S, S, 3], int64 labels [B]) from one split.

    Shards are read interleaved, encoded records shuffled (training), then decoded and resized in parallel
    into uint8 pixels (exactly decode_and_resize's values). `cache`: "auto" keeps them in memory after the
    first epoch when the split fits CACHE_BUDGET_BYTES and streams otherwise; "memory" always caches, "none"
    never, a folder caches on disk. A second, smaller shuffle, augmentation (so it differs every epoch) and
    the cast to float32 come after the cache, and batches are prefetched. With several workers each reads its
    own files when there are enough of them, else every worker reads all and keeps its share of the records.
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
    if training:
        buffer = max(16, min(DECODED_SHUFFLE, SHUFFLE_BYTES // (image_size * image_size * 3)))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if known and workers == 1:  # lets Keras show progress and stop warning that the input "ran out of data"
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
