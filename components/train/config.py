"""The training parameters, written once: the CLI's flags, both pipelines' parameters and the train component's
inputs take their defaults and checks from TrainConfig. Importing this module loads neither Keras nor TensorFlow,
so `catsdogs --help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, fields

from components.errors import InputError
from components.train import models, weights

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
    weights: str = ""  # "", "imagenet" (Keras' download or cache) or a weights file, local or gs:// (weights.py)
    augment: bool = False
    fine_tune_epochs: int = 0  # > 0: head first with the backbone frozen, then fine-tuning (finetune.py)
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
        weights.check(self.weights, self.architecture)
        from components.train import finetune  # imports Keras: not at module level, --help stays fast

        finetune.check(self.fine_tune_epochs, self.architecture, self.weights)


HELP = {
    "epochs": "passes over the training split",
    "batch_size": "images per step on each GPU or worker",
    "image_size": "images are resized to SxS pixels",
    "learning_rate": "Adam learning rate",
    "architecture": "network: a registered one or module.path:function",
    "weights": "the backbone's weights: imagenet (Keras' cache, downloaded where a network allows) or a file, "
               "local or gs://",
    "augment": "random flips and crops while training",
    "fine_tune_epochs": "after --epochs with the backbone frozen, this many more with its top layers unfrozen",
}


def parameters() -> dict[str, object]:
    """{name: default} of every training parameter, in TrainConfig's order (seed excluded: tests set it)."""
    return {f.name: f.default for f in fields(TrainConfig) if f.name != "seed"}
