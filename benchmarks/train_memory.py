"""Training memory at two data set sizes: peak RSS of one training epoch, each size in a fresh process.

    python benchmarks/train_memory.py [--sizes 1000,20000] [--image-size 150] [--cache auto] [--workdir DIR]

Generates and converts --base images once (--base/2 per class, the sample's ~300x400 JPEGs), then builds each
size's TRAIN split from copies of that shard (the same records repeated: what memory depends on is the number
of records, not their variety), trains the seed CNN for one epoch on it in a new process and prints that
process's peak RSS. Memory must not grow with the number of images beyond the cache budget (1 GiB).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time
from components.train.core import TrainConfig, train
data, model, size, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
train(data, model, TrainConfig(epochs=1, image_size=size, cache=cache))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - start}))
"""


def build(base: str, out: str, images: int) -> int:
    """A conversion folder whose TRAIN split is about `images` records (copies of base's TRAIN shard); returns
    the exact number."""
    with open(os.path.join(base, "summary.json")) as f:
        summary = json.load(f)
    per_shard = summary["per_split"]["TRAIN"]
    copies = max(1, images // per_shard)
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(base):
        if not name.startswith("train-"):
            shutil.copy(os.path.join(base, name), out)
    shard = next(n for n in os.listdir(base) if n.startswith("train-"))
    for i in range(copies):
        os.link(os.path.join(base, shard), os.path.join(out, f"train-{i:05d}-of-{copies:05d}.tfrecord"))
    summary["per_split"]["TRAIN"] = per_shard * copies
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f)
    return per_shard * copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--base", type=int, default=1000, help="distinct images generated (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--cache", default="auto")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    from components.convert.pipeline import convert
    from components.prepare import prepare_csv
    from components.sample_data import generate_sample

    workdir = args.workdir or tempfile.mkdtemp(prefix="catsdogs-bench-")
    images, base = os.path.join(workdir, "images"), os.path.join(workdir, "memory-base")
    if not os.path.isdir(images):
        generate_sample(images, per_class=args.base // 2)
    if not os.path.isdir(base):
        prepare_csv(images, os.path.join(workdir, "memory.csv"), train_fraction=0.9, validation_fraction=0.0)
        convert(os.path.join(workdir, "memory.csv"), base, num_shards=1)
    results = {}
    for size in (int(s) for s in args.sizes.split(",")):
        data = os.path.join(workdir, f"memory-{size}")
        shutil.rmtree(data, ignore_errors=True)
        count = build(base, data, size)
        model = tempfile.mkdtemp(prefix="catsdogs-model-")
        out = subprocess.run([sys.executable, "-c", CHILD, data, model, str(args.image_size), args.cache],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        shutil.rmtree(model, ignore_errors=True)
        results[size] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{count:>7} images, {args.image_size}px, cache {args.cache}: "
              f"peak RSS {results[size]['peak_rss_mb']:7.0f} MB, "
              f"epoch {results[size]['seconds']:.0f} s", flush=True)
    sizes = sorted(results)
    if len(sizes) > 1:
        print(f"growth {sizes[0]} -> {sizes[-1]} images: "
              f"{results[sizes[-1]]['peak_rss_mb'] - results[sizes[0]]['peak_rss_mb']:+.0f} MB")


if __name__ == "__main__":
    main()
