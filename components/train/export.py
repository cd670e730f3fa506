"""SavedModel export with stable, named serving signatures; preprocessing and class names live inside.

serving_default:  image_bytes  tf.string [N] (encoded JPEG/PNG/WebP/GIF/BMP, what Vertex's {"b64": ...} carries),
                  decoded by training's decoder (components/decode.py): EXIF orientation applied and
                  transparency flattened onto white, as conversion does
predict_pixels:   pixels       float32 [N, H, W, 3] in 0..255, any H and W (resized inside)
both return       probabilities float32 [N, K] (calibrated: divided by the temperature in logit space), labels
                  string [N] (the likeliest class; 2 classes with a threshold: the second class when its
                  probability reaches the threshold), classes string [N, K]
serving_profile:  serving_default plus the per-image profile drift monitoring compares (components/monitor/profile.py);
profile_pixels:   predict_pixels plus the profile's embedding (the server's, when it logs requests)
model_info:       no input -> image_size int32 (the side images are resized to), classes string [K],
                  temperature float32 (1: uncalibrated), threshold float32 (0: the likeliest class),
                  validation_ece_before / validation_ece_after float32 (-1: not measured)

Every prediction path (the server, batch prediction, Vertex, the serving check) reads `probabilities` and `labels`
from these signatures, so the calibration and the threshold chosen in training apply everywhere.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from components.calibration import EPSILON
from components.decode import decode_and_resize
from components.monitor.profile import profile_endpoint


def class_probabilities(outputs: tf.Tensor) -> tf.Tensor:
    """[N, K] probabilities from the model's head (a single sigmoid unit means K=2)."""
    if outputs.shape[-1] == 1:
        return tf.concat([1.0 - outputs, outputs], axis=-1)
    return outputs


def calibrated(probabilities: tf.Tensor, temperature: float) -> tf.Tensor:
    """softmax(log(p) / T), as components/calibration.scale: log p is the logits up to a per-image constant (for
    [1-p, p] from a sigmoid unit too), whatever the architecture; T = 1 returns p untouched."""
    if temperature == 1.0:
        return probabilities
    logits = tf.math.log(tf.clip_by_value(probabilities, EPSILON, 1.0))
    return tf.nn.softmax(logits / temperature, axis=-1)


def predicted_labels(probabilities: tf.Tensor, names: tf.Tensor, threshold: float) -> tf.Tensor:
    """The likeliest class, or with a threshold (2 classes) the second class when its probability reaches it."""
    if not threshold:
        return tf.gather(names, tf.argmax(probabilities, axis=-1))
    return tf.gather(names, tf.cast(probabilities[:, 1] >= threshold, tf.int64))


def export_saved_model(model: keras.Model, class_names: list[str], image_size: int, export_dir: str,
                       calibration: dict | None = None) -> None:
    """calibration: {"temperature", "threshold", "validation_ece_before", "validation_ece_after"} fitted in training
    (components/train/calibrate.py); absent keys mean none."""
    calibration = calibration or {}
    temperature = float(calibration.get("temperature", 1.0))
    threshold = float(calibration.get("threshold", 0.0))
    if threshold and len(class_names) != 2:
        raise ValueError(f"a threshold needs 2 classes, not {len(class_names)}")
    names = tf.constant(class_names)
    info = {"image_size": tf.constant(image_size, tf.int32), "classes": names,
            "temperature": tf.constant(temperature, tf.float32), "threshold": tf.constant(threshold, tf.float32)}
    for key in ("validation_ece_before", "validation_ece_after"):
        value = calibration.get(key)
        info[key] = tf.constant(-1.0 if value is None else value, tf.float32)

    def answer(outputs: tf.Tensor) -> dict[str, tf.Tensor]:
        """The signatures' outputs from the model's head."""
        probabilities = calibrated(tf.cast(class_probabilities(outputs), tf.float32), temperature)
        batch = tf.shape(probabilities)[0]
        return {
            "probabilities": probabilities,
            "labels": predicted_labels(probabilities, names, threshold),
            "classes": tf.tile(names[tf.newaxis, :], [batch, 1]),
        }

    def predict(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return answer(model(pixels, training=False))

    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            lambda b: decode_and_resize(b, image_size), image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        )
        return predict(pixels)

    def from_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict(tf.image.resize(tf.cast(pixels, tf.float32), [image_size, image_size]))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.add_endpoint(
        "predict_pixels", from_pixels,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")],
    )
    profile_endpoint(archive, model, answer, image_size)
    archive.add_endpoint(
        "model_info", lambda: dict(info), input_signature=[]
    )
    archive.write_out(export_dir, verbose=False)
