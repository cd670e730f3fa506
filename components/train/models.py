"""Model architectures. Each is a function (image_size, num_classes, weights) -> an uncompiled Keras model
whose input is float32 pixels in 0..255 and whose output is one sigmoid unit (2 classes) or a softmax.
To add one, write the function and name it in MODELS."""

import keras
from keras import layers

from components.train.weights import local_path


def classifier_head(num_classes: int) -> layers.Layer:
    # float32 even under mixed precision: probabilities near 0 and 1 need the range.
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")


def seed_cnn(image_size: int, num_classes: int, weights: str | None = None) -> keras.Model:
    """The seed project's CNN: four Conv2D+MaxPool blocks (16/32/64/64 filters), Dense 256."""
    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (16, 32, 64, 64):
        x = layers.Conv2D(filters, 3, activation="relu", padding="same")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    model = keras.Model(inputs, classifier_head(num_classes)(x), name="seed_cnn")
    if weights:
        model.load_weights(local_path(weights, "seed_cnn"))
    return model


def mobilenet_v3_small(image_size: int, num_classes: int, weights: str | None = None) -> keras.Model:
    """MobileNetV3Small backbone (its own 0..255 preprocessing built in), global pooling, dropout, head.
    `weights`: "imagenet" (Keras' ImageNet weights, see weights.py) or a file of backbone weights."""
    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(image_size, image_size, 3), include_top=False, weights=None, include_preprocessing=True
    )
    if weights:
        backbone.load_weights(local_path(weights, "mobilenet_v3_small"))
    x = layers.GlobalAveragePooling2D()(backbone(inputs))
    x = layers.Dropout(0.2)(x)
    return keras.Model(inputs, classifier_head(num_classes)(x), name="mobilenet_v3_small")


MODELS = {"seed_cnn": seed_cnn, "mobilenet_v3_small": mobilenet_v3_small}
