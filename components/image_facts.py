"""What one image file tells the data validation: its content hash, perceptual hash, size, format, mode and EXIF
rotation. Computed by `catsdogs validate` when it reads the images itself, and by `catsdogs convert` beside each
record (facts-SSSSS-of-NNNNN.csv), so that validation after conversion reads no image again.
"""

from __future__ import annotations

import hashlib
from dataclasses import astuple, dataclass

from components.image_files import open_header, upright_rgb

DRAFT_SIZE = (128, 128)  # JPEGs are decoded at the smallest DCT scale that keeps this size: pHash needs 32x32
EXIF_ROTATIONS = {5, 6, 7, 8}  # orientations that swap width and height
# The columns of convert's facts-*.csv: the row (split, image_uri, label) then the Facts fields, hashes in hex.
FACTS_COLUMNS = ("split", "image_uri", "label", "content", "phash", "width", "height", "format", "mode",
                 "exif_rotated")
FACTS_PREFIX = "facts"


@dataclass(frozen=True)
class Facts:
    """What validation learns from one image file."""

    content: int  # the first 8 bytes of its SHA-256, as an unsigned integer
    phash: int  # imagehash's 64-bit DCT perceptual hash of the upright image
    width: int
    height: int
    format: str
    mode: str
    exif_rotated: bool

    def values(self) -> list[str]:
        """The Facts columns of a facts-*.csv row."""
        content, phash, *rest = astuple(self)
        return [f"{content:016x}", f"{phash:016x}", *(str(int(v)) if isinstance(v, bool) else str(v) for v in rest)]

    @classmethod
    def parse(cls, values: list[str]) -> Facts:
        """The inverse of values()."""
        content, phash, width, height, fmt, mode, rotated = values
        return cls(int(content, 16), int(phash, 16), int(width), int(height), fmt, mode, rotated == "1")


def image_facts(data: bytes) -> Facts:
    """The facts of one encoded image; BadImage when it cannot be decoded."""
    import imagehash  # imports scipy: only where images are hashed

    image = open_header(data)
    fmt, mode = image.format or "unknown", image.mode
    rotated = image.getexif().get(0x0112, 1) in EXIF_ROTATIONS
    width, height = (image.height, image.width) if rotated else (image.width, image.height)
    image.draft("RGB", DRAFT_SIZE)  # JPEG only: decode at 1/2..1/8 scale, the hash resizes to 32x32 anyway
    phash = imagehash.phash(upright_rgb(image))
    content = int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
    return Facts(content, int(str(phash), 16), width, height, fmt, mode, rotated)
