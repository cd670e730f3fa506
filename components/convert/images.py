"""Turns one image file into RGB JPEG bytes or raw RGB pixels, or says exactly why it cannot (BadImage, from the
shared checks in components/image_files.py)."""

from __future__ import annotations

import io

from components.image_files import load, open_header, upright_rgb

# Conversion's pixel limit, above serving's: training photos are read one at a time per thread, not many at once.
MAX_PIXELS = 60_000_000
EXIF_ORIENTATION = 0x0112


def to_rgb_jpeg(data: bytes, quality: int = 95) -> tuple[bytes, int, int]:
    """(jpeg_bytes, height, width): clean RGB JPEGs pass through untouched, everything else is re-encoded
    after applying EXIF orientation and flattening transparency onto white."""
    image = open_header(data, MAX_PIXELS)
    height, width = image.height, image.width
    if image.format == "JPEG" and image.mode == "RGB" and image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        # Only checking: libjpeg's 1/8-scale decode still reads every byte of the scan, at a third of the cost.
        image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        load(image)
        return data, height, width
    rgb = upright_rgb(image)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), rgb.height, rgb.width


def to_rgb_pixels(data: bytes) -> tuple[bytes, int, int]:
    """(raw HxWx3 uint8 bytes, height, width) of the upright RGB image: TFRecorder's payload."""
    rgb = upright_rgb(open_header(data, MAX_PIXELS))
    return rgb.tobytes(), rgb.height, rgb.width
