"""The training parameters, written once: the CLI's flags, both pipelines' parameters and the train component's
inputs take their defaults and checks from TrainConfig. Importing this module loads neither Keras nor TensorFlow,
so `catsdogs --help` stays fast."""

from __future__ import annotations

import math
import os
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
    # Temperature scaling fitted on VALIDATION, applied inside the SavedModel: the probabilities every prediction
    # path returns mean what they say; the predicted class never changes (components/calibration.py).
    calibrate: bool = True
    # 2 classes: the second class is predicted at probability >= threshold (0: the likelier class), or at the
    # threshold that reaches target_precision (target_recall) on VALIDATION; at most one of the three.
    threshold: float = 0.0
    target_precision: float = 0.0
    target_recall: float = 0.0
    seed: int = 0
    # Decoded training pixels (data.make_dataset): auto (in memory when they fit 1 GiB, else streamed), memory,
    # none, or a folder for a disk cache. A property of the machine, not of the model: not a pipeline parameter.
    cache: str = "auto"

    @property
    def operating_point(self) -> str:
        """How the threshold is chosen, e.g. "target_precision 0.95" ("" for the likelier class)."""
        for name in ("threshold", "target_precision", "target_recall"):
            if getattr(self, name):
                return f"{name} {getattr(self, name)}"
        return ""

    def check(self) -> None:
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 32 <= self.image_size <= MAX_IMAGE_SIZE:
            raise InputError(f"--image-size must be between 32 and {MAX_IMAGE_SIZE}, got {self.image_size}")
        if not 0 < self.learning_rate < math.inf:
            raise InputError(f"--learning-rate must be a positive number, got {self.learning_rate}")
        if not self.cache or (self.cache not in ("auto", "memory", "none") and os.path.isfile(self.cache)):
            raise InputError(f"--cache must be auto, memory, none or a folder, got {self.cache!r}")
        for name in ("threshold", "target_precision", "target_recall"):
            if not 0 <= getattr(self, name) <= 1 or (name == "threshold" and getattr(self, name) == 1):
                raise InputError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}")
        chosen = [name for name in ("threshold", "target_precision", "target_recall") if getattr(self, name)]
        if len(chosen) > 1:
            raise InputError(f"--{chosen[0].replace('_', '-')} and --{chosen[1].replace('_', '-')} cannot be "
                             "combined: give the threshold, or the precision or recall it must reach on VALIDATION")
        models.resolve(self.architecture)  # InputError naming the value when it is neither registered nor importable
        weights.check(self.weights, self.architecture)
        weights.check_fine_tune(self.fine_tune_epochs, self.architecture, self.weights)


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
    "calibrate": "fit temperature scaling on VALIDATION and apply it inside the SavedModel",
    "threshold": "2 classes: predict the second class at probability >= this (0: the likelier class)",
    "target_precision": "2 classes: the threshold that reaches this precision on VALIDATION (0: none)",
    "target_recall": "2 classes: the threshold that reaches this recall on VALIDATION (0: none)",
}


def parameters() -> dict[str, object]:
    """{name: default} of every training parameter, in TrainConfig's order (seed excluded: tests set it; cache:
    the CLI's --cache, a property of the machine)."""
    return {f.name: f.default for f in fields(TrainConfig) if f.name not in ("seed", "cache")}
