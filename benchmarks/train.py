"""Training throughput: the seed CNN fed from TFRecords through our tf.data reader vs fed from tensors
already in memory (the ceiling: no reading or decoding at all), same images, same run.

    python benchmarks/train.py [--images 2000] [--image-size 150] [--epochs 3] [--precision float32]

Epoch 1 from TFRecords includes decoding (it fills the reader's cache); later epochs show the steady state.
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
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = getattr(self, "seconds", []) + [time.perf_counter() - self.start]


def fit(dataset: tf.data.Dataset, count: int, args) -> list[float]:
    keras.utils.set_random_seed(0)
    model = compile_model(TrainConfig(image_size=args.image_size, batch_size=args.batch_size), 2)
    timer = EpochTimer()
    model.fit(dataset, epochs=args.epochs, verbose=0, callbacks=[timer])
    return [count / s for s in timer.seconds]


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
    from_records = fit(make_dataset(data, "TRAIN", args.image_size, args.batch_size, training=True, seed=0), count, args)
    from_memory = fit(in_memory, count, args)
    device = "GPU" if tf.config.list_logical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    print(f"seed_cnn {args.image_size}px, batch {args.batch_size}, {args.precision}, {device}, {count} images")
    for epoch, (ours, ceiling) in enumerate(zip(from_records, from_memory), start=1):
        print(f"epoch {epoch}: from TFRecords {ours:7.1f} img/s, from memory {ceiling:7.1f} img/s, "
              f"ratio {ours / ceiling:.0%}")


if __name__ == "__main__":
    main()
