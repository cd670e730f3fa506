"""Architectures: the networks `catsdogs train` can fit, registered once by name.

An architecture is a function `f(image_size, num_classes)` (optionally also taking `weights=`, a weights file)
returning an *uncompiled* Keras model whose input is float32 pixels in 0..255 [S, S, 3] and whose output is one
sigmoid unit (2 classes) or a softmax over the classes. Training adds the loss, the optimizer and the export.

To add one to the project: write the function below and decorate it with `@register`. It then appears in
`catsdogs train --help`, `catsdogs run --help`, the components and both pipelines.

To use one without touching the repo: pass `--architecture my_module:my_function` (the same string as the
`architecture` pipeline parameter); `my_module` must be importable (on PYTHONPATH locally; in the trainer image on
Vertex, see the README).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from components.errors import InputError
from components.train.weights import local_path

if TYPE_CHECKING:
    import keras

# Keras is imported inside the functions: the registry's names are read by `catsdogs --help`, which must not pay
# TensorFlow's import (~2.5 s).
ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {}
DEFAULT_ARCHITECTURE = "seed_cnn"


def register(function: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    """Adds an architecture to the registry under its function's name."""
    ARCHITECTURES[function.__name__] = function
    return function


def classifier_head(num_classes: int):
    from keras import layers

    # float32 even under mixed precision: probabilities near 0 and 1 need the range.
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")


@register
def seed_cnn(image_size: int, num_classes: int, weights: str | None = None) -> keras.Model:
    """The seed project's CNN: four Conv2D+MaxPool blocks (16/32/64/64 filters), Dense 256."""
    import keras
    from keras import layers

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


@register
def mobilenet_v3_small(image_size: int, num_classes: int, weights: str | None = None) -> keras.Model:
    """MobileNetV3Small backbone (its own 0..255 preprocessing built in), global pooling, dropout, head.
    `weights`: "imagenet" (Keras' ImageNet weights, see weights.py) or a file of backbone weights."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(image_size, image_size, 3), include_top=False, weights=None, include_preprocessing=True
    )
    if weights:
        backbone.load_weights(local_path(weights, "mobilenet_v3_small"))
    x = layers.GlobalAveragePooling2D()(backbone(inputs))
    x = layers.Dropout(0.2)(x)
    return keras.Model(inputs, classifier_head(num_classes)(x), name="mobilenet_v3_small")


def is_plugin(name: str) -> bool:
    """`module.path:function` names a user's architecture outside the registry."""
    return ":" in name


def resolve(name: str) -> Callable[..., keras.Model]:
    """The architecture function for a registered name or a `module.path:function` plug-in; InputError (one
    line, naming the value) for anything else."""
    if not is_plugin(name):
        if name not in ARCHITECTURES:
            raise InputError(f"--architecture {name!r} is unknown: choose from {', '.join(ARCHITECTURES)} "
                             f"or give module.path:function")
        return ARCHITECTURES[name]
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"--architecture {name!r}: cannot import {module_name!r} ({e}); is it on PYTHONPATH "
                         f"(locally) or in the trainer image (on Vertex)?") from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InputError(f"--architecture {name!r}: {module_name} has no function {function_name!r}")
    return function


def build(name: str, image_size: int, num_classes: int, weights: str | None = None) -> keras.Model:
    """An uncompiled model from the named architecture, checked against the contract above."""
    import keras

    function = resolve(name)
    accepts_weights = "weights" in inspect.signature(function).parameters
    if weights and not accepts_weights:
        raise InputError(f"--architecture {name!r} takes no weights= argument, but --weights {weights} was given")
    model = function(image_size, num_classes, weights=weights) if accepts_weights else function(image_size, num_classes)
    if not isinstance(model, keras.Model):
        raise InputError(f"--architecture {name!r} returned {type(model).__name__}, not a keras.Model")
    expected = 1 if num_classes == 2 else num_classes
    if tuple(model.input_shape[1:]) != (image_size, image_size, 3) or model.output_shape[-1] != expected:
        raise InputError(f"--architecture {name!r}: the model maps {model.input_shape} to {model.output_shape}; "
                         f"expected (None, {image_size}, {image_size}, 3) to (None, {expected})")
    return model
