"""Trains a Keras classifier from the TFRecords of `convert` and exports it as a SavedModel.

The strategy follows the machine (see distribute.py); precision follows the device (mixed_float16 on GPUs,
float32 on CPUs, where mixed precision is several times slower); an interrupted run resumes from its last
finished epoch when the same command runs again.
"""

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import keras
import tensorflow as tf

from components import model_store, storage, warmup
from components.contracts import HELD_OUT_SPLITS
from components.convert import schema
from components.errors import InputError
from components.train import calibrate, distribute, finetune, models
from components.train.config import TrainConfig
from components.train.data import held_out_images, make_dataset, shard_errors
from components.train.export import export_saved_model

log = logging.getLogger(__name__)

BACKUP_DIR = "backup"  # inside the model dir while training; removed when training completes
BACKUP_CONFIG = "catsdogs-config.json"  # inside BACKUP_DIR: the settings the interrupted run trained with


def set_precision() -> str:
    policy = "mixed_float16" if tf.config.list_logical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def compile_model(config: TrainConfig, num_classes: int) -> keras.Model:
    model = models.build(config.architecture, config.image_size, num_classes, config.weights or None)
    if config.fine_tune_epochs:
        finetune.freeze_backbone(model)
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss, metrics=["accuracy"])
    return model


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore keeping the previous checkpoint too: a kill during a save leaves a torn weights
    file, and Keras then restores the one before. Says which epoch training resumes from. writes=False (the
    non-chief workers of a multi-node run): restores from the chief's backup, never saves or deletes it."""

    def __init__(self, backup_dir: str, writes: bool = True):
        super().__init__(backup_dir, double_checkpoint=True, delete_checkpoint=writes)
        self.writes = writes
        self.resumed_from = 0

    def _save_model(self):
        if self.writes:
            super()._save_model()

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        path = storage.join(self.backup_dir, "training_metadata.json")
        self.resumed_from = json.loads(storage.read_text(path))["epoch"] if storage.exists(path) else 0
        if self.resumed_from:
            log.info("Resuming from epoch %d (checkpoint in %s)", self.resumed_from, self.backup_dir)


def _resumable_settings(config: TrainConfig, class_names: list[str]) -> dict:
    """What must not change for a backup to be resumed: everything but the numbers of epochs, the cache and what
    is fitted after training (calibration and threshold: they do not touch the weights)."""
    after = ("epochs", "fine_tune_epochs", "cache", "calibrate", "threshold", "target_precision", "target_recall")
    settings = {k: v for k, v in asdict(config).items() if k not in after}
    return {**settings, "class_names": class_names}


def check_backup(backup_dir: str, settings: dict, writes: bool = True) -> None:
    """Refuses to resume a backup made with other settings (its weights would not fit, or would silently
    continue another experiment); records the settings beside a new backup (when it `writes`: the chief)."""
    path = storage.join(backup_dir, BACKUP_CONFIG)
    if storage.exists(storage.join(backup_dir, "training_metadata.json")):
        saved = json.loads(storage.read_text(path)) if storage.exists(path) else {}
        changed = [f"{k} {saved.get(k, '?')!r}, now {v!r}" for k, v in settings.items() if saved.get(k) != v]
        if changed:
            raise InputError(f"{backup_dir} holds an interrupted run with other settings ({'; '.join(changed)}): "
                             f"re-run with those settings to resume it, or delete {backup_dir} to start over")
    elif writes:
        storage.write_text(path, json.dumps(settings, indent=1))


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first batch or epoch whose loss is NaN or infinite and remembers the epoch."""

    def __init__(self):
        super().__init__()
        self.diverged_at = 0  # 1-based epoch; 0 while the loss is finite
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _check(self, logs, keys):
        for key in keys:
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                self.diverged_at = self.diverged_at or self.epoch + 1
                self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, ("loss",))

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, ("loss", "val_loss"))


def check_held_out(data_dir: str) -> None:
    """Evaluation scores on TEST, else VALIDATION: refuse to train when it would have nothing to score."""
    if not any(schema.split_size(data_dir, split) for split in HELD_OUT_SPLITS):
        raise InputError(f"{data_dir} has no {' or '.join(HELD_OUT_SPLITS)} records, so the model could not be "
                         f"evaluated; re-run `catsdogs prepare` with --train-fraction below 1")


def _backed_up_epochs(model_dir: str) -> tuple[int, int]:
    """(head phase, fine-tuning phase) epochs finished according to the backups in model_dir."""
    found = []
    for folder in (BACKUP_DIR, finetune.BACKUP_DIR):
        path = storage.join(model_dir, folder, "training_metadata.json")
        found.append(json.loads(storage.read_text(path))["epoch"] if storage.exists(path) else 0)
    return found[0], found[1]


def check_same_start(strategy: tf.distribute.Strategy, model_dir: str) -> None:
    """Every worker of a multi-node run must resume from the same backup: one that started afresh while the chief
    resumed would wait forever in a collective for steps the others never take. Workers that see different
    backups (a --model-dir not shared among them) all stop with the same error instead."""
    local = tf.constant(_backed_up_epochs(model_dir), tf.float32)
    # Sums of x and x*x: equal on every worker, and n*sum(x*x) == sum(x)**2 exactly when all the x are equal.
    sums = strategy.reduce("SUM", strategy.run(lambda: tf.concat([local, local * local], 0)), axis=None).numpy()
    if any(abs(strategy.num_replicas_in_sync * sums[i + 2] - sums[i] ** 2) > 0.5 for i in range(2)):
        raise InputError(f"the workers see different backups under --model-dir (this one: {model_dir}, epochs "
                         f"{_backed_up_epochs(model_dir)}): give every worker the same --model-dir on storage they "
                         f"all reach (gs:// on Vertex)")


@dataclass(frozen=True)
class TrainResult:
    history: dict[str, list[float]]  # per-epoch loss and accuracy (val_ too, with a VALIDATION split)
    export_dir: str  # model_dir on the chief; "" on other workers (they export to a folder they remove)
    weights_sha256: str = ""  # of the trained weights: the same on every worker of a multi-node run


def weights_digest(model: keras.Model) -> str:
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()


def train(data_dir: str, model_dir: str, config: TrainConfig = TrainConfig(),
          strategy: tf.distribute.Strategy | None = None,
          callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Fits the model on TRAIN (validating on VALIDATION when it has records) and exports the SavedModel
    to model_dir. Only the chief writes model_dir; other workers of a multi-node run export to a temporary
    folder they remove, as MultiWorkerMirroredStrategy needs every worker to save. `callbacks` are added to
    fit's (the component passes experiment tracking's)."""
    config.check()
    class_names = schema.read_labels(data_dir)
    if not schema.split_size(data_dir, "TRAIN"):
        raise InputError(f"{data_dir} has no TRAIN records ({schema.shard_pattern(data_dir, 'TRAIN')})")
    check_held_out(data_dir)
    calibrate.check(config, len(class_names), bool(schema.split_size(data_dir, "VALIDATION")))
    keras.utils.set_random_seed(config.seed)
    cluster = distribute.cluster_config()
    strategy = strategy or distribute.choose_strategy(cluster)
    chief = distribute.is_chief(cluster)
    workers = distribute.worker_count(cluster)
    policy = set_precision()

    global_batch = config.batch_size * strategy.num_replicas_in_sync
    # Several workers: each reads its own shards (or its share of the records), so their counts differ, and the
    # one that runs out first would be handed empty batches, on which Conv2D fails ("input depth must be evenly
    # divisible by filter depth: 3 vs 16") and whose loss is 0/0. Endless data and counted steps give every
    # worker the same number of full steps; an epoch is still one pass's worth of images.
    repeat = workers > 1
    steps: dict[str, int] = {}
    train_data = make_dataset(data_dir, "TRAIN", config.image_size, global_batch, training=True, seed=config.seed,
                              workers=workers, augment_images=config.augment, cache=config.cache, repeat=repeat)
    if repeat:
        steps["steps_per_epoch"] = math.ceil(schema.split_size(data_dir, "TRAIN") / global_batch)
    validation = None
    if schema.split_size(data_dir, "VALIDATION"):
        validation = make_dataset(data_dir, "VALIDATION", config.image_size, global_batch, workers=workers,
                                  cache=config.cache, repeat=repeat)
        if repeat:
            steps["validation_steps"] = math.ceil(schema.split_size(data_dir, "VALIDATION") / global_batch)

    with strategy.scope():
        model = compile_model(config, len(class_names))
    # Every worker resumes from the chief's backup (model_dir is shared: gs:// on Vertex), so all restart at the
    # same epoch with the same weights; only the chief writes it.
    backup = ResumableBackup(storage.join(model_dir, BACKUP_DIR), writes=chief)
    check_backup(backup.backup_dir, _resumable_settings(config, class_names), writes=chief)
    if workers > 1:
        check_same_start(strategy, model_dir)
    nan_guard = StopOnNaN()
    log.info("training %s (%s) on %d classes %s for %d epochs, %d replicas, global batch %d", config.architecture,
             policy, len(class_names), class_names, config.epochs, strategy.num_replicas_in_sync, global_batch)
    with shard_errors(data_dir):
        if config.fine_tune_epochs:
            tune_backup = storage.join(model_dir, finetune.BACKUP_DIR)
            history = finetune.fit(
                model, strategy, train_data, validation, config.epochs, config.fine_tune_epochs,
                config.learning_rate, [nan_guard, backup, *callbacks],
                [nan_guard, ResumableBackup(tune_backup, writes=chief), *callbacks], tune_backup, steps)
        else:
            history = model.fit(
                train_data, validation_data=validation, epochs=config.epochs, verbose=2,
                callbacks=[nan_guard, backup, *callbacks], **steps,
            ).history
    if nan_guard.diverged_at:
        for folder in (backup.backup_dir, storage.join(model_dir, finetune.BACKUP_DIR)):
            if chief and tf.io.gfile.exists(folder):  # its weights are NaN too: a re-run must start afresh
                tf.io.gfile.rmtree(folder)
        raise InputError(f"training diverged: loss became NaN at epoch {nan_guard.diverged_at}; lower "
                         f"--learning-rate (now {config.learning_rate})")
    # Every worker exports (saving a model of distributed variables is collective), the others to a temporary
    # folder made only now (a worker killed while training leaves none) and removed at once.
    # The temperature and the threshold, fitted on VALIDATION. Every worker does the same pass, as with export:
    # nothing then waits on a worker that skipped a step the model's distributed variables might share.
    with shard_errors(data_dir):
        held = (calibrate.validation_probabilities(model, data_dir, config.image_size, config.batch_size)
                if validation is not None else (None, None))
    fitted = calibrate.fit(config, *held)
    output_dir = model_dir if chief else tempfile.mkdtemp(prefix="catsdogs-worker-")
    try:
        export_saved_model(model, class_names, config.image_size, output_dir, fitted)
    finally:
        if not chief:
            tf.io.gfile.rmtree(output_dir)
    digest = weights_digest(model)
    log.info("weights sha256 %s (the same on every worker of a multi-node run)", digest)
    if not chief:
        return TrainResult(history, "", digest)
    info = {"config": asdict(config), "class_names": class_names, "history": history,
            "precision": policy, "replicas": strategy.num_replicas_in_sync, "workers": workers,
            "resumed_from_epoch": backup.resumed_from, "weights_sha256": digest, "calibration": fitted,
            "data": data_dir if storage.is_gcs(data_dir) else os.path.abspath(data_dir)}  # `catsdogs export`'s default
    model_store.write_training_info(output_dir, info)
    # Real held-out images as TF Serving warm-up records: servers replay them before serving (components/warmup.py).
    warmup.write_warmup(output_dir, held_out_images(data_dir, warmup.RECORDS))
    log.info("exported SavedModel to %s", output_dir)
    return TrainResult(history, output_dir, digest)

