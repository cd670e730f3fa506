"""Checks of encoded image files that conversion, batch prediction, the server and the prediction client share:
the header check (format and size read before any pixel is decoded) and the normalisation to upright RGB.

A small compressed file can declare a huge image, and decoding it would exhaust memory: every caller refuses an
image over its pixel limit from the header alone. The limit is checked here, per call; Pillow's own
`Image.MAX_IMAGE_PIXELS` (a setting of the whole process) is left as it is.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

# Serving and batch prediction: the server decodes many requests at once (see components/serve/budget.py).
MAX_PIXELS = 40_000_000


class BadImage(ValueError):
    """An image file that cannot be used; the message is the reason (errors-*.csv, a 400 answer)."""


def open_header(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image with only its header read (format, mode, size); BadImage when the data is empty, no image, a
    corrupt header or over max_pixels."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    too_large = f"the image is over the {max_pixels}-pixel limit (decompression bomb rejected)"
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit and refuses above twice that; ours is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadImage(too_large) from e
    except UnidentifiedImageError as e:
        raise BadImage("not an image: content is in no known image format") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"corrupt image: {e}") from e
    if image.width * image.height > max_pixels:
        raise BadImage(too_large)
    return image


def load(image: Image.Image) -> Image.Image:
    """Decodes every pixel, so truncated or corrupt data is found here and not in training."""
    try:
        image.load()
        return image
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"corrupt image: {e}") from e


def upright_rgb(image: Image.Image) -> Image.Image:
    """The decoded image upright (EXIF orientation applied) in RGB, transparency flattened onto white: what
    conversion stores and the shared TensorFlow decoder (components/decode.py) reproduces."""
    image = ImageOps.exif_transpose(load(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return image.convert("RGB")
