"""Model architectures. Each takes (image_size, num_classes) and returns an uncompiled Keras model whose
input is float32 pixels in 0..255 and whose output is one sigmoid unit (2 classes) or a softmax."""

from __future__ import annotations

import keras
from keras import layers


def classifier_head(num_classes: int) -> layers.Layer:
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", name="probability")
    return layers.Dense(num_classes, activation="softmax", name="probabilities")


def seed_cnn(image_size: int, num_classes: int) -> keras.Model:
    """The seed project's CNN: four Conv2D+MaxPool blocks (16/32/64/64 filters), Dense 256."""
    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (16, 32, 64, 64):
        x = layers.Conv2D(filters, 3, activation="relu", padding="same")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, classifier_head(num_classes)(x), name="seed_cnn")


MODELS = {"seed_cnn": seed_cnn}
