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
):
    """Trains a Keras image classifier from the TFRecords with tf.data and exports a SavedModel whose
    serving_default signature takes encoded image bytes and returns class probabilities and labels.
    The distribution strategy follows the machine: CPU, N GPUs (mirrored) or N nodes (multi-worker)."""
    from components import logs
    from components.train.core import TrainConfig, train as fit

    logs.setup()
    config = TrainConfig(epochs=epochs, batch_size=batch_size, image_size=image_size,
                         learning_rate=learning_rate, model=model_name, weights=weights, augment=augment)
    result = fit(tfrecords.uri, model.uri, config)
    model.metadata.update({"framework": "tensorflow", "image_size": image_size, "model": model_name,
                           "train_accuracy": result.history["accuracy"][-1]})
