from typing import Dict, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.trainer, install_kfp_package=False)
def train(
    tfrecords: Input[Dataset],
    model: Output[Model],
    epochs: int = 5,
    batch_size: int = 32,
    image_size: int = 150,
    learning_rate: float = 0.001,
    model_name: str = "seed_cnn",
    weights: str = "",
    augment: bool = False,
    wandb_settings: Optional[Dict[str, str]] = None,
):
    """Trains a Keras image classifier from the TFRecords with tf.data and exports a SavedModel whose
    serving_default signature takes encoded image bytes and returns class probabilities and labels.
    The distribution strategy follows the machine: CPU, N GPUs (mirrored) or N nodes (multi-worker).
    wandb_settings (tracking.pipeline_settings) makes it a W&B run (the chief's): tfrecords in, per-epoch
    metrics, model out."""
    from dataclasses import asdict

    from components import logs, tracking
    from components.train import distribute
    from components.train.core import TrainConfig, train as fit

    logs.setup()
    config = TrainConfig(epochs=epochs, batch_size=batch_size, image_size=image_size,
                         learning_rate=learning_rate, model=model_name, weights=weights, augment=augment)
    chief = distribute.is_chief(distribute.cluster_config())
    with tracking.step_run("train", wandb_settings, asdict(config), primary=chief) as run:
        run.use("tfrecords", tfrecords.uri)
        result = fit(tfrecords.uri, model.uri, config, callbacks=run.keras_callbacks())
        model.metadata.update({"framework": "tensorflow", "image_size": image_size, "model": model_name,
                               "train_accuracy": result.history["accuracy"][-1]})
        run.log_output("model", model.uri, model.metadata)
