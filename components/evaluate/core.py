"""Scores the exported SavedModel (the artifact that gets deployed) on the TEST split, or on VALIDATION when
the data has no TEST split."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from components.convert import schema
from components.errors import InputError
from components.train.core import training_info
from components.train.data import make_dataset

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    split: str
    class_names: list[str]
    examples: int
    accuracy: float
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class

    def per_class(self) -> dict[str, dict[str, float]]:
        matrix = np.array(self.confusion_matrix)
        scores = {}
        for i, name in enumerate(self.class_names):
            predicted, actual = matrix[:, i].sum(), matrix[i, :].sum()
            scores[name] = {
                "precision": float(matrix[i, i] / predicted) if predicted else 0.0,
                "recall": float(matrix[i, i] / actual) if actual else 0.0,
            }
        return scores


def evaluation_split(data_dir: str) -> str:
    for split in ("TEST", "VALIDATION"):
        if schema.split_size(data_dir, split):
            return split
    raise InputError(f"{data_dir} has neither TEST nor VALIDATION records to evaluate on")


def evaluate(model_dir: str, data_dir: str, batch_size: int = 64) -> Evaluation:
    """Runs the exported model's pixel signature over the split, decoded exactly as in training."""
    class_names = schema.read_labels(data_dir)
    split = evaluation_split(data_dir)
    image_size = training_info(model_dir)["config"]["image_size"]
    predict = tf.saved_model.load(model_dir).signatures["predict_pixels"]
    matrix = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    for pixels, labels in make_dataset(data_dir, split, image_size, batch_size):
        predicted = np.argmax(predict(pixels=pixels)["probabilities"].numpy(), axis=-1)
        np.add.at(matrix, (labels.numpy(), predicted), 1)
    examples = int(matrix.sum())
    accuracy = float(np.trace(matrix) / examples)
    log.info("%s accuracy %.4f on %d examples", split, accuracy, examples)
    return Evaluation(split, class_names, examples, accuracy, matrix.tolist())
