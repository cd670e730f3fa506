"""The one image decoder that training, evaluation, the exported SavedModel's serving signature, the server and
batch prediction share: encoded bytes -> upright RGB pixels, normalised exactly as conversion normalises (EXIF
orientation applied, transparency flattened onto white, grey and CMYK to RGB), in TensorFlow graph ops only so
that it runs inside the SavedModel. It depends on TensorFlow and nothing else of ours: serving imports it
without conversion, Beam or pandas.
"""

from __future__ import annotations

import math

import tensorflow as tf

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


# Byte value -> one-byte string, for writing headers. A list, made a tensor where it is used: a tensor made at
# import would start TensorFlow's runtime, after which MultiWorkerMirroredStrategy cannot be set up ("Collective
# ops must be configured at program startup"; tests/test_structure.py checks the decoder starts nothing).
_BYTES = [bytes([i]) for i in range(256)]
GIF_MAX_BLOCKS = 64  # extensions before a GIF's first image (files have a few: loop count, timing, comments)


def _le(values: tf.Tensor, size: int) -> tf.Tensor:
    """The integer values (int32) as size-byte little-endian strings, joined."""
    shifts = tf.range(size) * 8
    digits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.reshape(values, [-1, 1]), shifts), 255)
    return tf.strings.reduce_join(tf.gather(tf.constant(_BYTES), tf.reshape(digits, [-1])))


def _le_at(image_bytes: tf.Tensor, offset: tf.Tensor, size: int) -> tf.Tensor:
    """The size-byte little-endian unsigned integer at offset (0 past the end)."""
    return tf.reduce_sum(_bytes_at(image_bytes, offset, size) * (256 ** tf.range(size)))


def gif_first_frame(image_bytes: tf.Tensor) -> tf.Tensor:
    """The GIF cut after its first image and closed with the trailer, so the decoder makes one frame, not
    every frame at the first one's size (a 6 KB GIF of a 2000x2000 frame and 99 one-pixel frames decoded to
    +1.2 GB, measured). Walks the blocks: at most GIF_MAX_BLOCKS extensions, then the first image's descriptor
    and its sub-blocks; a malformed file stays malformed (and fails to decode).

    Sub-blocks are chains of length bytes; where a chain starting at each offset ends is found for all offsets
    at once by pointer doubling (log2 of the size gathers): one loop step per sub-block took ~95 us, so a
    140 KB file of 1-byte sub-blocks cost 6.6 s of CPU (measured)."""
    raw = tf.io.decode_raw(tf.strings.join([image_bytes, bytes(16)]), tf.uint8)  # zeros after the end: stops
    last = tf.size(raw) - 1
    index = tf.range(last + 1)
    wide = tf.cast(raw, tf.int32)
    hop = tf.where(tf.equal(wide, 0), index, tf.minimum(index + 1 + wide, last))  # 0 ends a chain: stay
    rounds = tf.cast(tf.math.ceil(tf.math.log(tf.cast(last + 2, tf.float32)) / math.log(2.0)), tf.int32)
    hop = tf.while_loop(lambda i, hop: i < rounds, lambda i, hop: (i + 1, tf.gather(hop, hop)), [0, hop])[1]

    def byte(at):
        return tf.cast(tf.gather(raw, tf.minimum(at, last)), tf.int32)

    def after_chain(at):  # the offset after the sub-blocks starting at `at` (after their 0 terminator)
        return tf.gather(hop, tf.minimum(at, last)) + 1

    def step(pos, end, steps):
        kind, local = byte(pos), byte(pos + 9)  # an image descriptor's flags: local colour table?
        descriptor = 10 + tf.where(local >= 128, 3 * 2 ** (local % 8 + 1), 0) + 1  # + the LZW code size byte
        extension = tf.equal(kind, 0x21)  # then a label byte and sub-blocks
        end = tf.where(tf.equal(kind, 0x2C), after_chain(pos + descriptor), tf.where(extension, -1, pos))
        return tf.where(extension, after_chain(pos + 2), pos), end, steps + 1

    flags = byte(10)  # logical screen descriptor: global colour table?
    first = 13 + tf.where(flags >= 128, 3 * 2 ** (flags % 8 + 1), 0)
    pos, end, _ = tf.while_loop(lambda pos, end, steps: tf.logical_and(end < 0, steps < GIF_MAX_BLOCKS),
                                step, [first, tf.constant(-1), tf.constant(0)])
    end = tf.where(end < 0, pos, end)
    return tf.strings.join([tf.strings.substr(image_bytes, 0, tf.minimum(end, tf.strings.length(image_bytes))),
                            b"\x3b"])


def webp_first_frame(image_bytes: tf.Tensor) -> tf.Tensor:
    """A still WebP of an animated WebP's first frame (the file as it is when it is not animated).
    TensorFlow's decoder makes every frame at the canvas size, and on an animation without the alpha flag it
    corrupts the heap (malloc abort, the whole process gone: TF 2.21, measured), so animations never reach it:
    the first ANMF chunk's frame data (ALPH + VP8, or VP8L) gets an extended header (VP8X) of its own size.
    The frame's offset on the canvas is ignored (Pillow composites it; first frames cover the canvas), and a
    frame larger than the canvas the header declares (what the pixel budget counted) is refused."""
    vp8x_flags = _bytes_at(image_bytes, tf.constant(20), 1)[0]
    animated = tf.logical_and(tf.equal(_substr(image_bytes, tf.constant(12), 4), b"VP8X"),
                              tf.equal(tf.bitwise.bitwise_and(vp8x_flags, 2), 2))
    anmf = _find(tf.where(animated, image_bytes, ""), b"ANMF")
    size = _le_at(image_bytes, anmf + 4, 4) - 16  # the frame data after its 16-byte header
    width_1, height_1 = _le_at(image_bytes, anmf + 14, 3), _le_at(image_bytes, anmf + 17, 3)
    frame = _substr(image_bytes, anmf + 24, tf.maximum(size, 0))
    alpha = tf.where(tf.logical_or(tf.equal(tf.strings.substr(frame, 0, 4), b"ALPH"),
                                   tf.equal(tf.strings.substr(frame, 0, 4), b"VP8L")), 0x10, 0)
    still = tf.strings.join([b"RIFF", _le(tf.strings.length(frame) + 22, 4), b"WEBPVP8X", _le(10, 4),
                             _le(alpha, 4), _le(width_1, 3), _le(height_1, 3), frame])
    # A frame larger than the canvas (what the header, and so the pixel budget, says) is refused: no bytes.
    fits = tf.logical_and(width_1 <= _le_at(image_bytes, tf.constant(24), 3),
                          height_1 <= _le_at(image_bytes, tf.constant(27), 3))
    return tf.where(animated, tf.where(fits, still, ""), image_bytes)


def _onto_white(rgba: tf.Tensor) -> tf.Tensor:
    """PIL's paste of RGBA onto a white RGB image with the alpha as mask, in PIL's own integer arithmetic
    (Paste.c's BLEND and DIV255), in uint16: a 4 MP RGBA image blended in float32 peaked at +150 MB."""
    rgb, alpha = tf.cast(rgba[..., :3], tf.uint16), tf.cast(rgba[..., 3:], tf.uint16)
    blend = rgb * alpha + 255 * (255 - alpha) + 128  # at most 65,153: fits
    return tf.cast(tf.bitwise.right_shift(blend + tf.bitwise.right_shift(blend, 8), 8), tf.uint8)


def _jpeg_scale(image_bytes: tf.Tensor, image_size: int | None) -> tf.Tensor:
    """k for the largest DCT-domain downscale 2**k (1, 2, 4 or 8) that keeps the short side >= image_size."""
    if image_size is None:
        return tf.constant(0)
    short = tf.reduce_min(tf.io.extract_jpeg_shape(image_bytes)[:2])
    return tf.reduce_sum(tf.cast(short >= tf.constant([2, 4, 8]) * image_size, tf.int32))


def decode_upright_rgb(image_bytes: tf.Tensor, image_size: int | None = None, converted: bool = False
                       ) -> tf.Tensor:
    """Encoded image -> float32 [H, W, 3] in 0..255: decode_upright_uint8's pixels as float32."""
    return tf.cast(decode_upright_uint8(image_bytes, image_size, converted), tf.float32)


def decode_upright_uint8(image_bytes: tf.Tensor, image_size: int | None = None, converted: bool = False
                         ) -> tf.Tensor:
    """Encoded image -> uint8 [H, W, 3], normalised as conversion normalises (convert/images.py):
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
    # uint8 until the caller's float32 (4x larger): a 4 MP image decoded, turned and cast peaked at ~150 MB in
    # float32 throughout, ~85 MB this way (measured); a server decodes several at once.
    jpeg = [lambda r=r: tf.io.decode_jpeg(image_bytes, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
            for r in (1, 2, 4, 8)]
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
        # Only images with transparency pay for the blend (a 4 MP one: ~4x the decoded bytes at its peak).
        return tf.cond(flatten, lambda: _onto_white(tf.io.decode_png(image_bytes, channels=4)),
                       lambda: tf.io.decode_png(image_bytes, channels=3))

    def webp():
        # 3 channels (lossy without alpha, the usual kind) or 4: channels=4 refuses 3-channel files
        image = tf.io.decode_webp(webp_first_frame(image_bytes), channels=0)[0]
        return tf.cond(tf.equal(tf.shape(image)[-1], 4), lambda: _onto_white(image), lambda: image[..., :3])

    # One flat switch and the EXIF parse outside it: ops inside tf.cond/switch_case branches, and nested
    # control flow, ran several times slower inside tf.data (measured), so the branches only decode.
    # extract_jpeg_shape fails on other formats: they get a tiny JPEG's shape instead.
    shape_of = tf.where(header.jpeg, image_bytes, tf.io.encode_jpeg(tf.zeros([8, 8, 1], tf.uint8)))
    index = tf.where(header.jpeg, _jpeg_scale(shape_of, image_size),
                     tf.where(header.png, 4, tf.where(header.webp, 5, tf.where(header.gif, 6, 7))))
    image = tf.switch_case(index, [
        *jpeg,
        png,
        webp,
        lambda: tf.io.decode_gif(gif_first_frame(image_bytes))[0],
        # BMP; anything else fails here with TensorFlow's message
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False),
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
    image = decode_upright_uint8(image_bytes, image_size, converted)  # resize makes float32 of it (once)
    return tf.round(tf.image.resize(image, [image_size, image_size]))
