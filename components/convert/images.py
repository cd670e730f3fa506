"""Checks one image file and turns it into RGB JPEG bytes or raw RGB pixels, or says exactly why it cannot."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; we refuse at the warning.
MAX_PIXELS = 60_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
EXIF_ORIENTATION = 0x0112


class BadImage(ValueError):
    """The file cannot become a training image; the message is the reason recorded in errors-*.csv."""


def _open(data: bytes) -> Image.Image:
    """Reads the header only (format, mode, size), refusing decompression bombs before any pixel is decoded."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"decompression bomb rejected: {e}") from e
    except UnidentifiedImageError as e:
        raise BadImage("not an image: content is in no known image format") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"corrupt image: {e}") from e


def _load(image: Image.Image) -> Image.Image:
    """Decodes every pixel, so truncated or corrupt data is found here and not in training."""
    try:
        image.load()
        return image
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"corrupt image: {e}") from e


def _upright_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(_load(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return image.convert("RGB")


def to_rgb_jpeg(data: bytes, quality: int = 95) -> tuple[bytes, int, int]:
    """(jpeg_bytes, height, width): clean RGB JPEGs pass through untouched, everything else is re-encoded
    after applying EXIF orientation and flattening transparency onto white."""
    image = _open(data)
    height, width = image.height, image.width
    if image.format == "JPEG" and image.mode == "RGB" and image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        # Only checking: libjpeg's 1/8-scale decode still reads every byte of the scan, at a third of the cost.
        image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        _load(image)
        return data, height, width
    rgb = _upright_rgb(image)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), rgb.height, rgb.width


def to_rgb_pixels(data: bytes) -> tuple[bytes, int, int]:
    """(raw HxWx3 uint8 bytes, height, width) of the upright RGB image: TFRecorder's payload."""
    rgb = _upright_rgb(_open(data))
    return rgb.tobytes(), rgb.height, rgb.width
