"""Where the model looked: integrated gradients (Sundararajan et al. 2017) of the class's probability with
respect to the pixels, through the exported SavedModel's own pixel signature, so it works for every
architecture, registered or plug-in, conv layers or not, and explains exactly what is deployed.

Cost: STEPS forward and backward passes per image, so the evaluate step explains a bounded number of images
(`--saliency-images`, default SALIENCY_IMAGES) and reports the seconds spent."""

from __future__ import annotations

import io

import numpy as np

STEPS = 16  # Riemann steps from the black baseline to the image; 16 keeps the sum within a few % of 64's
SALIENCY_IMAGES = 12  # images explained per evaluation (the gallery's first ones: surest mistakes first)


def integrated_gradients(predict, pixels: np.ndarray, targets: np.ndarray, steps: int = STEPS) -> np.ndarray:
    """[N, S, S] attribution mass per pixel (|IG| summed over the channels) of probability[target], for float
    pixels [N, S, S, 3] in 0..255 against a black image. `predict`: the SavedModel's predict_pixels signature."""
    import tensorflow as tf

    image = tf.constant(pixels, tf.float32)
    index = tf.constant(targets, tf.int32)
    total = tf.zeros_like(image)
    for alpha in (np.arange(steps) + 0.5) / steps:  # midpoint rule
        scaled = image * float(alpha)
        with tf.GradientTape() as tape:
            tape.watch(scaled)
            chosen = tf.gather(predict(pixels=scaled)["probabilities"], index, batch_dims=1)
        gradient = tape.gradient(chosen, scaled)
        if gradient is None:
            raise ValueError("the SavedModel's predict_pixels signature has no gradient with respect to its pixels")
        total += gradient
    return np.abs((image * total / steps).numpy()).sum(axis=-1)


def overlay(pixels: np.ndarray, attribution: np.ndarray, size: int) -> bytes:
    """The image, greyed, with the attribution as a red heat layer on top: a JPEG at most `size` a side."""
    from PIL import Image

    heat = attribution / max(float(np.percentile(attribution, 99)), 1e-12)
    heat = np.clip(heat, 0, 1)[..., None]
    grey = pixels.astype(np.float32).mean(axis=-1, keepdims=True).repeat(3, axis=-1) * 0.6
    red = np.array([255.0, 40.0, 0.0])
    mixed = (grey * (1 - heat) + red * heat).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(mixed)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()
