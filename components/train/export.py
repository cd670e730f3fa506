"""SavedModel export with stable, named serving signatures; preprocessing and class names live inside.

serving_default:  image_bytes  tf.string [N] (encoded JPEG/PNG/WebP/GIF/BMP, what Vertex's {"b64": ...} carries),
                  decoded by training's decoder (components/decode.py): EXIF orientation applied and
                  transparency flattened onto white, as conversion does
predict_pixels:   pixels       float32 [N, H, W, 3] in 0..255, any H and W (resized inside)
both return       probabilities float32 [N, K], labels string [N] (the likeliest class), classes string [N, K]
serving_profile:  serving_default plus the per-image profile drift monitoring compares (components/monitor/profile.py)
model_info:       no input -> image_size int32 (the side images are resized to), classes string [K]
"""

from __future__ import annotations

import keras
import tensorflow as tf

from components.decode import decode_and_resize
from components.monitor.profile import profile_endpoint


def class_probabilities(outputs: tf.Tensor) -> tf.Tensor:
    """[N, K] probabilities from the model's head (a single sigmoid unit means K=2)."""
    if outputs.shape[-1] == 1:
        return tf.concat([1.0 - outputs, outputs], axis=-1)
    return outputs


def export_saved_model(model: keras.Model, class_names: list[str], image_size: int, export_dir: str) -> None:
    names = tf.constant(class_names)

    def predict(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = tf.cast(class_probabilities(model(pixels, training=False)), tf.float32)
        batch = tf.shape(probabilities)[0]
        return {
            "probabilities": probabilities,
            "labels": tf.gather(names, tf.argmax(probabilities, axis=-1)),
            "classes": tf.tile(names[tf.newaxis, :], [batch, 1]),
        }

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
    profile_endpoint(archive, model, predict, image_size)
    archive.add_endpoint(
        "model_info", lambda: {"image_size": tf.constant(image_size, tf.int32), "classes": names}, input_signature=[]
    )
    archive.write_out(export_dir, verbose=False)
