"""The training parameters, written once: the CLI's flags, both pipelines' parameters and the train component's
inputs take their defaults and checks from TrainConfig. Importing this module loads neither Keras nor TensorFlow,
so `catsdogs --help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, fields

from components import storage
from components.errors import InputError
from components.train import models

MAX_IMAGE_SIZE = 1024  # a batch of 32 float32 1024x1024 images is 400 MB before the network's activations


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the one place these parameters' defaults are written. The CLI, the train component's
    callers and both pipelines take their defaults from here."""

    epochs: int = 5
    batch_size: int = 32  # per replica: each GPU or worker gets this many images a step
    image_size: int = 150
    learning_rate: float = 1e-3
    architecture: str = models.DEFAULT_ARCHITECTURE  # a registered name or module.path:function
    weights: str = ""  # a local weights file for the model's backbone; nothing downloads at run time
    augment: bool = False
    seed: int = 0

    def check(self) -> None:
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 32 <= self.image_size <= MAX_IMAGE_SIZE:
            raise InputError(f"--image-size must be between 32 and {MAX_IMAGE_SIZE}, got {self.image_size}")
        if not self.learning_rate > 0:
            raise InputError(f"--learning-rate must be positive, got {self.learning_rate}")
        models.resolve(self.architecture)  # InputError naming the value when it is neither registered nor importable
        if self.weights and not storage.exists(self.weights):
            raise InputError(f"--weights {self.weights} does not exist")


HELP = {
    "epochs": "passes over the training split",
    "batch_size": "images per step on each GPU or worker",
    "image_size": "images are resized to SxS pixels",
    "learning_rate": "Adam learning rate",
    "architecture": "network: a registered one or module.path:function",
    "weights": "weights file for the architecture's backbone (local or gs://)",
    "augment": "random flips and crops while training",
}


def parameters() -> dict[str, object]:
    """{name: default} of every training parameter, in TrainConfig's order (seed excluded: tests set it)."""
    return {f.name: f.default for f in fields(TrainConfig) if f.name != "seed"}
