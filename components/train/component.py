from typing import Dict, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import LOCAL


# The training parameters have no defaults here on purpose: KFP runs this function's source on its own, so a
# default could not be imported from TrainConfig. Both pipelines pass every one, with TrainConfig's defaults.
@dsl.component(base_image=LOCAL.trainer, install_kfp_package=False)
def train(
    tfrecords: Input[Dataset],
    model: Output[Model],
    epochs: int,
    batch_size: int,
    image_size: int,
    learning_rate: float,
    architecture: str,
    weights: str,
    augment: bool,
    fine_tune_epochs: int,
    calibrate: bool,
    threshold: float,
    target_precision: float,
    target_recall: float,
    wandb_settings: Optional[Dict[str, str]] = None,
):
    """Trains a Keras image classifier from TFRecords with tf.data and exports a SavedModel whose serving
    signature takes encoded image bytes and returns class probabilities and labels. The distribution strategy
    follows the machine: CPU, N GPUs (mirrored) or N nodes (multi-worker).

    Args:
        tfrecords: The conversion's output folder: TFRecord shards, labels.json and summary.json.
        model: Where the SavedModel (and training.json, recording the architecture and history) is written.
        epochs: Passes over the TRAIN split.
        batch_size: Images per step on each GPU or worker (the global batch is this times the replicas).
        image_size: Images are resized to image_size x image_size pixels, in training and in serving alike.
        learning_rate: Adam's learning rate.
        architecture: A registered architecture (seed_cnn, mobilenet_v3_small, ...) or module.path:function
            importable in the trainer image.
        weights: The backbone's starting weights: "imagenet" (Keras' pretrained weights, downloaded on Google
            Cloud), a weights file (local or gs://), or empty for random weights.
        augment: Random flips and crops while training.
        fine_tune_epochs: After `epochs` with the backbone frozen, this many more with its top layers unfrozen at
            a lower learning rate (0: no fine-tuning; needs an architecture with a pretrained backbone).
        calibrate: Fit temperature scaling on VALIDATION and apply it inside the SavedModel.
        threshold: 2 classes: the second class is predicted at probability >= threshold (0: the likelier class).
        target_precision: 2 classes: choose the threshold reaching this precision on VALIDATION (0: none).
        target_recall: 2 classes: choose the threshold reaching this recall on VALIDATION (0: none).
        wandb_settings: W&B tracking (tracking.settings); the chief's run logs per-epoch metrics.
    """
    from dataclasses import asdict

    from components import logs, tracking
    from components.step_summary import epoch_callback, epoch_line, write_summary
    from components.train import distribute
    from components.train.core import TrainConfig
    from components.train.core import train as fit

    logs.setup()
    config = TrainConfig(epochs=epochs, batch_size=batch_size, image_size=image_size, learning_rate=learning_rate,
                         architecture=architecture, weights=weights, augment=augment,
                         fine_tune_epochs=fine_tune_epochs, calibrate=calibrate, threshold=threshold,
                         target_precision=target_precision, target_recall=target_recall)
    chief = distribute.is_chief(distribute.cluster_config())
    with tracking.step_run("train", "train", wandb_settings, asdict(config), primary=chief) as run:
        run.use("tfrecords", tfrecords.uri)
        result = fit(tfrecords.uri, model.uri, config, callbacks=[*run.keras_callbacks(), epoch_callback()])
        model.metadata.update({"framework": "tensorflow", "image_size": image_size, "architecture": architecture,
                               "train_accuracy": result.history["accuracy"][-1]})
        total, last = epochs + fine_tune_epochs, {k: v[-1] for k, v in result.history.items() if v}
        write_summary(model, epoch_line(total, total, last))
        run.log_output("model", model.uri, model.metadata)
