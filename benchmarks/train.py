"""Training throughput: the seed CNN fed from TFRecords through our tf.data reader vs fed from tensors
already in memory (the ceiling: no reading or decoding at all), same images, same run.

    python benchmarks/train.py [--images 2000] [--image-size 150] [--epochs 3] [--precision float32]

Epoch 1 from TFRecords includes decoding (it fills the reader's cache); later epochs show the steady state.
The two runs take turns epoch by epoch, so load from other processes on a shared machine hits both alike, and
each epoch is also reported per CPU-second of this process (images / CPU time), which such load barely moves.
"""

import argparse
import os
import tempfile
import time

import keras
import tensorflow as tf

from components.convert.pipeline import convert
from components.prepare import prepare_csv
from components.sample_data import generate_sample
from components.train.core import TrainConfig, compile_model
from components.train.data import make_dataset


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds, self.cpu_seconds = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
        self.cpu_seconds.append(time.process_time() - self.cpu_start)


def fit_in_turns(datasets: list[tf.data.Dataset], args) -> list[EpochTimer]:
    """One model per dataset, trained one epoch at a time in turns."""
    models, timers = [], []
    for _ in datasets:
        keras.utils.set_random_seed(0)
        models.append(compile_model(TrainConfig(image_size=args.image_size, batch_size=args.batch_size), 2))
        timers.append(EpochTimer())
    for epoch in range(args.epochs):
        for model, dataset, timer in zip(models, datasets, timers, strict=True):
            model.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[timer])
    return timers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    keras.mixed_precision.set_global_policy(args.precision)

    workdir = args.workdir or tempfile.mkdtemp(prefix="catsdogs-bench-")
    images, data = os.path.join(workdir, "images"), os.path.join(workdir, "jpeg")
    if not os.path.isdir(images):
        generate_sample(images, per_class=args.images // 2)
    if not os.path.isdir(data):
        prepare_csv(images, os.path.join(workdir, "images.csv"), train_fraction=1.0, validation_fraction=0.0)
        convert(os.path.join(workdir, "images.csv"), data)

    records = make_dataset(data, "TRAIN", args.image_size, args.batch_size, training=True, seed=0)
    batches = list(records)  # decoded once, held in memory
    pixels, labels = tf.concat([x for x, _ in batches], 0), tf.concat([y for _, y in batches], 0)
    count = int(labels.shape[0])
    in_memory = (tf.data.Dataset.from_tensor_slices((pixels, labels)).shuffle(2048, seed=0)
                 .batch(args.batch_size).prefetch(tf.data.AUTOTUNE))
    records = make_dataset(data, "TRAIN", args.image_size, args.batch_size, training=True, seed=0)
    ours, ceiling = fit_in_turns([records, in_memory], args)
    device = "GPU" if tf.config.list_logical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    print(f"seed_cnn {args.image_size}px, batch {args.batch_size}, {args.precision}, {device}, {count} images")
    for epoch in range(args.epochs):
        wall = (count / ours.seconds[epoch], count / ceiling.seconds[epoch])
        cpu = (count / ours.cpu_seconds[epoch], count / ceiling.cpu_seconds[epoch])
        print(f"epoch {epoch + 1}: from TFRecords {wall[0]:7.1f} img/s, from memory {wall[1]:7.1f} img/s, "
              f"ratio {wall[0] / wall[1]:.0%}; per CPU-second {cpu[0]:6.1f} vs {cpu[1]:6.1f}, "
              f"ratio {cpu[0] / cpu[1]:.0%}")


if __name__ == "__main__":
    main()
