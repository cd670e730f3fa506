"""Trains a Keras classifier from the TFRecords of `convert` and exports it as a SavedModel."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import keras

from components import storage
from components.convert import schema
from components.errors import InputError
from components.train.data import make_dataset
from components.train.export import export_saved_model
from components.train.models import MODELS

log = logging.getLogger(__name__)

TRAINING_INFO = "training.json"  # beside the SavedModel: config, class names, per-epoch history


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    image_size: int = 150
    learning_rate: float = 1e-3
    model: str = "seed_cnn"
    seed: int = 0

    def check(self) -> None:
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.image_size < 16:
            raise InputError(f"--image-size must be at least 16 (four 2x2 poolings), got {self.image_size}")
        if not self.learning_rate > 0:
            raise InputError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.model not in MODELS:
            raise InputError(f"--model {self.model!r} is unknown; choose from {', '.join(MODELS)}")


def compile_model(config: TrainConfig, num_classes: int) -> keras.Model:
    model = MODELS[config.model](config.image_size, num_classes)
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss, metrics=["accuracy"])
    return model


def train(data_dir: str, model_dir: str, config: TrainConfig = TrainConfig()) -> dict[str, list[float]]:
    """Fits the model on TRAIN (validating on VALIDATION when it has records), exports the SavedModel to
    model_dir and returns the per-epoch history."""
    config.check()
    class_names = schema.read_labels(data_dir)
    if not schema.split_size(data_dir, "TRAIN"):
        raise InputError(f"{data_dir} has no TRAIN records ({schema.shard_pattern(data_dir, 'TRAIN')})")
    keras.utils.set_random_seed(config.seed)

    train_data = make_dataset(data_dir, "TRAIN", config.image_size, config.batch_size, training=True, seed=config.seed)
    validation = None
    if schema.split_size(data_dir, "VALIDATION"):
        validation = make_dataset(data_dir, "VALIDATION", config.image_size, config.batch_size)

    model = compile_model(config, len(class_names))
    log.info("training %s on %d classes %s for %d epochs", config.model, len(class_names), class_names, config.epochs)
    history = model.fit(train_data, validation_data=validation, epochs=config.epochs, verbose=2)
    export_saved_model(model, class_names, config.image_size, model_dir)
    storage.write_text(
        storage.join(model_dir, TRAINING_INFO),
        json.dumps({"config": config.__dict__, "class_names": class_names, "history": history.history}, indent=1),
    )
    log.info("exported SavedModel to %s", model_dir)
    return history.history


def training_info(model_dir: str) -> dict:
    path = storage.join(model_dir, TRAINING_INFO)
    if not storage.exists(path):
        raise InputError(f"{path} not found: is {model_dir} the output of `catsdogs train`?")
    return json.loads(storage.read_text(path))
