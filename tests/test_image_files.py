"""The shared image checks: one BadImage, pixel limits checked per call, Pillow's process-wide limit untouched."""

import os
import struct
import subprocess
import sys
import zlib

import pytest

from components.convert.images import to_rgb_jpeg
from components.image_files import MAX_PIXELS, BadImage, open_header


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with no pixel data (a decompression bomb looks like this)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_importing_the_stages_leaves_pillows_own_limit_alone():
    # A fresh process: what importing conversion, serving and batch prediction does to Pillow's global setting.
    code = ("from PIL import Image; before = Image.MAX_IMAGE_PIXELS; import components.convert.pipeline, "
            "components.serve.server, components.serve.client, components.batch_predict.core; "
            "print(before, Image.MAX_IMAGE_PIXELS)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    before, after = done.stdout.split()
    assert before == after, f"Pillow's MAX_IMAGE_PIXELS changed from {before} to {after}"


def test_each_caller_has_its_own_limit_below_pillows():
    bomb = png_header(7_000, 7_000)  # 49 MP: over serving's limit, under conversion's and Pillow's warning
    with pytest.raises(BadImage, match=f"over the {MAX_PIXELS}-pixel limit"):
        open_header(bomb)
    assert open_header(bomb, max_pixels=60_000_000).size == (7_000, 7_000)
    with pytest.raises(BadImage, match="over the 60000000-pixel limit"):  # conversion's, from the header alone
        to_rgb_jpeg(png_header(8_000, 8_000))


@pytest.mark.parametrize("data, reason", [(b"", "empty file"), (b"plain text", "not an image"),
                                          (png_header(99_999, 99_999), "pixel limit")])
def test_bad_files_are_one_badimage_with_the_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        open_header(data)
