"""Generates a labelled image set to demo and test with (no real photos can be downloaded here).

Each class gets its own hue and shape, drawn over a photo-like background at a varied size around 300x400,
so the seed CNN separates the classes in a few epochs while the images still look like a dataset.
The same seed always gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import io
import os

import numpy as np
from PIL import Image, ImageDraw

from components.errors import InputError

SHAPES = ("ellipse", "rectangle", "triangle")


def _class_colour(index: int, num_classes: int, rng: np.random.Generator) -> tuple[int, int, int]:
    hue = (index / num_classes + rng.uniform(-0.03, 0.03)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like backdrop: smooth, low-saturation colour blotches plus a little sensor-like noise
    (pure noise would make JPEGs unrealistically large, a flat colour unrealistically small)."""
    grey = rng.uniform(60, 180, size=(6, 8, 1))
    tint = rng.uniform(-25, 25, size=(6, 8, 3))
    blotches = Image.fromarray((grey + tint).clip(0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    noise = rng.normal(0, 5, size=(height, width, 3))
    return (np.asarray(blotches, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8)


def draw_image(index: int, num_classes: int, rng: np.random.Generator) -> Image.Image:
    """One picture of class `index`: 2-4 shapes in the class's colour over a varied background."""
    width, height = int(rng.integers(340, 461)), int(rng.integers(260, 341))
    image = Image.fromarray(_background(width, height, rng))
    draw = ImageDraw.Draw(image)
    shape = SHAPES[index % len(SHAPES)]
    for _ in range(int(rng.integers(2, 5))):
        size = int(rng.integers(50, 130))
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        colour = _class_colour(index, num_classes, rng)
        if shape == "ellipse":
            draw.ellipse((x, y, x + size, y + size), fill=colour)
        elif shape == "rectangle":
            draw.rectangle((x, y, x + size, y + size * 2 // 3), fill=colour)
        else:
            draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=colour)
    return image


def generate_sample(
    out_dir: str,
    per_class: int = 200,
    classes: tuple[str, ...] = ("cats", "dogs"),
    layout: str = "flat",
    seed: int = 0,
    validation_fraction: float = 0.2,
) -> list[str]:
    """Writes `per_class` JPEGs per class under out_dir and returns their paths.

    layout "flat" writes OUT_DIR/<label>/<label>.NNNNN.jpg; "split" writes OUT_DIR/train|validation/<label>/...
    with `validation_fraction` of each class in validation (the seed project's layout).
    """
    if per_class < 1:
        raise InputError(f"--per-class must be at least 1, got {per_class}")
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(c.strip() for c in classes):
        raise InputError(f"--classes needs two or more distinct, non-empty names, got {list(classes)}")
    if layout not in ("flat", "split"):
        raise InputError(f"--layout must be 'flat' or 'split', got {layout!r}")
    num_validation = round(per_class * validation_fraction)
    written = []
    for index, label in enumerate(classes):
        for i in range(per_class):
            rng = np.random.default_rng([seed, index, i])
            image = draw_image(index, len(classes), rng)
            folder = os.path.join(out_dir, label)
            if layout == "split":
                split = "validation" if i < num_validation else "train"
                folder = os.path.join(out_dir, split, label)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{label}.{i:05d}.jpg")
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            with open(path, "wb") as f:
                f.write(buffer.getvalue())
            written.append(path)
    return written
