"""After training, on VALIDATION: the temperature that calibrates the model's probabilities and the operating
threshold of a 2-class model, both then written into the SavedModel (export.py) and training.json.

The model sees VALIDATION once here (one pass, probabilities only: [N, K] floats in memory, no images kept).
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from components import calibration
from components.errors import InputError
from components.train.config import TrainConfig
from components.train.data import make_dataset
from components.train.export import class_probabilities

log = logging.getLogger(__name__)


def check(config: TrainConfig, num_classes: int, has_validation: bool) -> None:
    """Before training: a threshold needs 2 classes, and a target needs VALIDATION records to be reached on."""
    if config.operating_point and num_classes != 2:
        raise InputError(f"--{config.operating_point.split()[0].replace('_', '-')} needs 2 classes; the data has "
                         f"{num_classes}")
    if (config.target_precision or config.target_recall) and not has_validation:
        raise InputError(f"--{config.operating_point.split()[0].replace('_', '-')} is reached on VALIDATION, and the "
                         "data has no VALIDATION records: re-run `catsdogs prepare` with a validation share, or give "
                         "--threshold")


def validation_probabilities(model: keras.Model, data_dir: str, image_size: int, batch_size: int
                             ) -> tuple[np.ndarray, np.ndarray]:
    """([N, K] probabilities, [N] labels) of the model on VALIDATION."""
    probabilities, labels = [], []
    for pixels, batch_labels in make_dataset(data_dir, "VALIDATION", image_size, batch_size, cache="none"):
        probabilities.append(np.asarray(class_probabilities(model(pixels, training=False)), np.float32))
        labels.append(batch_labels.numpy())
    return np.concatenate(probabilities), np.concatenate(labels)


def fit(config: TrainConfig, probabilities: np.ndarray | None, labels: np.ndarray | None) -> dict:
    """{"temperature", "validation_ece_before", "validation_ece_after", "threshold", "operating_point", and with
    VALIDATION the threshold's "validation_precision"/"validation_recall" and whether a target was "reached"}.
    probabilities None: no VALIDATION records (temperature 1, the given threshold)."""
    result: dict = {"temperature": 1.0, "threshold": config.threshold, "operating_point": config.operating_point}
    if probabilities is None or not len(labels):
        return result
    before = calibration.reliability(probabilities, labels)["ece"]
    if config.calibrate:
        temperature = calibration.fit_temperature(probabilities, labels)
        scaled = calibration.scale(probabilities, temperature)
        if temperature in (calibration.TEMPERATURES[0], calibration.TEMPERATURES[-1]):
            # Measured: a model that separates VALIDATION perfectly (val_loss 0.000) has its likelihood rise as
            # T falls to the search's edge (0.05): sharpening that made TEST ECE worse. VALIDATION cannot bound T.
            result["note"] = (f"not scaled: the best temperature on VALIDATION lies at the search's edge "
                              f"({temperature:.3g}; VALIDATION is separated too cleanly to bound it)")
        elif calibration.reliability(scaled, labels)["ece"] > before:
            result["note"] = f"not scaled: temperature {temperature:.3g} would raise the ECE on VALIDATION"
        else:
            result["temperature"], probabilities = temperature, scaled
        if "note" in result:
            log.warning("calibration %s", result["note"])
    else:
        result["note"] = "not scaled: trained with --no-calibrate"
    result["validation_ece_before"] = before
    result["validation_ece_after"] = calibration.reliability(probabilities, labels)["ece"]
    if probabilities.shape[1] != 2:
        return result
    scores, positives = probabilities[:, 1], labels == 1
    if config.target_precision or config.target_recall:
        threshold, reached = calibration.choose_threshold(scores, positives, config.target_precision,
                                                          config.target_recall)
        result.update(threshold=threshold, reached=reached)
        if not reached:
            log.warning("%s is not reached on VALIDATION; the threshold with the best precision is used: %.4f",
                        config.operating_point, threshold)
    at = calibration.at_threshold(scores, positives, result["threshold"] or 0.5)
    result.update(validation_precision=at["precision"], validation_recall=at["recall"])
    log.info("calibration on VALIDATION: temperature %.3f, ECE %.4f -> %.4f; threshold %.4f (%s): precision %.3f, "
             "recall %.3f", result["temperature"], before, result["validation_ece_after"], result["threshold"],
             result["operating_point"] or "the likelier class", at["precision"], at["recall"])
    return result
