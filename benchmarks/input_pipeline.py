"""Input pipeline speed: the project's tf.data reader vs the seed project's `get_dataset`, same images.

    python benchmarks/input_pipeline.py [--images 2000] [--image-size 150] [--rounds 3] [--workdir DIR]

The seed read TFRecorder records with `parse_single_example` in a sequential map, shuffle 2048, batch 5.
Ours reads `jpeg` records (the default format) with interleaved files, parallel decoding (JPEGs at least twice
the target size decode at 1/2..1/8 scale in the DCT domain) and prefetch. Each reader is timed over one full
pass of a freshly built dataset (the first epoch: nothing cached), in the same run; our reader on TFRecorder
records is shown too, to separate the format's share from the reader's. The readers take turns for --rounds
rounds and each one's best pass counts, so load from other processes on a shared machine hits all alike.
"""

import argparse
import os
import tempfile
import time

import tensorflow as tf

from components.convert.pipeline import convert
from components.prepare import prepare_csv
from components.sample_data import generate_sample
from components.train.data import make_dataset, record_files


def seed_get_dataset(data_dir: str, image_size: int, batch_size: int = 5) -> tf.data.Dataset:
    """The seed notebook's reader, as written against TFRecorder's output."""
    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "image_height": tf.io.FixedLenFeature([], tf.int64),
        "image_width": tf.io.FixedLenFeature([], tf.int64),
        "image_channels": tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        f = tf.io.parse_single_example(record, features)
        image = tf.reshape(tf.io.decode_raw(tf.io.decode_base64(f["image"]), tf.uint8),
                           [f["image_height"], f["image_width"], f["image_channels"]])
        return tf.image.resize(tf.cast(image, tf.float32) / 255.0, [image_size, image_size]), f["label"]

    files = record_files(data_dir, "TRAIN")
    return tf.data.TFRecordDataset(files, compression_type="GZIP").map(parse).shuffle(2048).batch(batch_size)


def images_per_second(dataset: tf.data.Dataset) -> tuple[float, int]:
    start, count = time.perf_counter(), 0
    for images, _ in dataset:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32, help="our reader's batch (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="passes per reader, taken in turns (default %(default)s)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="catsdogs-bench-")
    images = os.path.join(workdir, "images")
    if not os.path.isdir(images):
        generate_sample(images, per_class=args.images // 2)
    prepare_csv(images, os.path.join(workdir, "images.csv"), train_fraction=1.0, validation_fraction=0.0)
    for record_format in ("jpeg", "tfrecorder"):
        if not os.path.isdir(os.path.join(workdir, record_format)):
            convert(os.path.join(workdir, "images.csv"), os.path.join(workdir, record_format),
                    record_format=record_format)

    size = args.image_size
    runs = {
        "seed get_dataset (tfrecorder records)": lambda: seed_get_dataset(os.path.join(workdir, "tfrecorder"), size),
        "ours (tfrecorder records)": lambda: make_dataset(os.path.join(workdir, "tfrecorder"), "TRAIN", size,
                                                          args.batch_size, training=True),
        "ours (jpeg records)": lambda: make_dataset(os.path.join(workdir, "jpeg"), "TRAIN", size, args.batch_size,
                                                    training=True),
    }
    passes = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, build in runs.items():
            speed, count = images_per_second(build())
            passes[name].append(speed)
    results = {name: max(speeds) for name, speeds in passes.items()}
    for name, speeds in passes.items():
        print(f"{name:>38}: {results[name]:7.1f} img/s best of {' '.join(f'{s:.0f}' for s in speeds)} ({count} images)")
    baseline = results["seed get_dataset (tfrecorder records)"]
    print(f"ours (jpeg) vs seed: {results['ours (jpeg records)'] / baseline:.1f}x; "
          f"ours (tfrecorder) vs seed: {results['ours (tfrecorder records)'] / baseline:.1f}x; cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
