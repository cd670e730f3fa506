"""Fine-tuning (`--fine-tune-epochs N`), as in keras.io's transfer-learning guide: train the new head with the
pretrained backbone frozen (`--epochs`), then unfreeze the backbone's top layers and train N more epochs at a
learning rate 100 times lower (the guide's 1e-3 then 1e-5), so the pretrained features are adjusted, not erased.

BatchNormalization layers stay frozen, which in Keras 3 also runs them in inference mode: the guide's warning is
that updating their statistics on a small dataset wrecks what the backbone learned. The fine-tuning phase has
its own checkpoint folder; a run interrupted during it resumes there without repeating the head phase.
"""

import logging

import keras

from components import storage
from components.errors import InputError

log = logging.getLogger(__name__)

LEARNING_RATE_FACTOR = 0.01  # keras.io's guide: 1e-3 for the head, 1e-5 for fine-tuning
TOP_FRACTION = 1 / 3  # TensorFlow's transfer-learning tutorial unfreezes MobileNetV2 from layer 100 of 154
BACKUP_DIR = "backup-fine-tune"  # inside the model dir beside the head phase's backup; removed when training ends


def backbone(model: keras.Model) -> keras.Model:
    """The pretrained part: the model nested in the classifier (models.py builds backbone -> pooling -> head)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not nested:
        raise InputError(f"{model.name} has no backbone to freeze or fine-tune")
    return nested[0]


def freeze_backbone(model: keras.Model) -> None:
    """Before compiling for the head phase (Keras reads `trainable` when the model is compiled)."""
    backbone(model).trainable = False


def unfreeze_top(model: keras.Model, fraction: float = TOP_FRACTION) -> int:
    """Makes the top `fraction` of the backbone's layers trainable, BatchNormalization excepted; returns how
    many layers were unfrozen. Recompile afterwards."""
    base = backbone(model)
    base.trainable = True
    first = len(base.layers) - max(1, round(len(base.layers) * fraction))
    unfrozen = 0
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= first and not isinstance(layer, keras.layers.BatchNormalization)
        unfrozen += layer.trainable
    return unfrozen


def fit(model: keras.Model, strategy, train_data, validation, epochs: int, fine_tune_epochs: int,
        learning_rate: float, head_callbacks: list, fine_tune_callbacks: list, fine_tune_backup: str,
        steps: dict | None = None) -> dict:
    """Both phases (the model compiled with its backbone frozen); returns the history of both, epochs numbered
    on from the head phase's. `fine_tune_backup` is the fine-tuning phase's checkpoint folder; `steps`: fit's
    steps_per_epoch and validation_steps, when the data repeats endlessly (multi-node)."""
    steps = steps or {}
    history: dict[str, list[float]] = {}
    if storage.exists(storage.join(fine_tune_backup, "training_metadata.json")):
        log.info("Resuming fine-tuning (the head phase finished before, its history is not repeated)")
    else:
        history = model.fit(train_data, validation_data=validation, epochs=epochs, verbose=2,
                            callbacks=head_callbacks, **steps).history
    unfrozen = unfreeze_top(model)
    rate = learning_rate * LEARNING_RATE_FACTOR
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.Adam(rate), loss=model.loss, metrics=["accuracy"])
    log.info("fine-tuning the top %d layers of %s for %d epochs at learning rate %g", unfrozen,
             backbone(model).name, fine_tune_epochs, rate)
    tuned = model.fit(train_data, validation_data=validation, initial_epoch=epochs, epochs=epochs + fine_tune_epochs,
                      verbose=2, callbacks=fine_tune_callbacks, **steps).history
    return {name: history.get(name, []) + values for name, values in tuned.items()}
