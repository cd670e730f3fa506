"""The baseline stored with every version: the held-out images' profiles through the SavedModel's own
serving_profile signature (the one the server logs), written by the evaluate step as baseline.json beside the
SavedModel, so publishing the version carries it along.

baseline.json: {"format": 1, "split", "images" (how many were profiled), "classes", "class_counts" (predicted,
over every image), "rows": {"label", "confidence", "embedding", "image_stats"}: a uniform sample of at most
BASELINE_SAMPLE images (reservoir sampling: memory bounded whatever the split's size)}.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import numpy as np

from components import storage
from components.monitor.profile import BASELINE_FILE, BASELINE_SAMPLE, DECIMALS, IMAGE_STATS, PROFILE_SIGNATURE

log = logging.getLogger(__name__)
FORMAT = 1


class Reservoir:
    """A uniform sample of at most `size` rows of a stream (Vitter's algorithm R), seeded: the same stream gives
    the same sample."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seen, self.rows = size, 0, []
        self.rng = np.random.default_rng(seed)

    def add(self, row) -> None:
        self.seen += 1
        if len(self.rows) < self.size:
            self.rows.append(row)
        else:
            slot = int(self.rng.integers(0, self.seen))
            if slot < self.size:
                self.rows[slot] = row


def profile_rows(outputs: dict) -> list[dict]:
    """serving_profile's numpy outputs for a batch -> one dict per image with LOG_FIELDS' model fields (what the
    server logs per request, without time and version)."""
    labels = [label.decode() if isinstance(label, bytes) else str(label) for label in outputs["labels"]]
    return [{"label": label, "probabilities": p.tolist(), "embedding": e.tolist(), "image_stats": s.tolist()}
            for label, p, e, s in zip(labels, outputs["probabilities"], outputs["embedding"], outputs["image_stats"])]


def profile_images(loaded, batches: Iterable) -> Iterable[dict]:
    """Runs the loaded SavedModel's serving_profile over batches of encoded images; yields one row per image."""
    signature = loaded.signatures[PROFILE_SIGNATURE]
    for batch in batches:
        outputs = {k: v.numpy() for k, v in signature(image_bytes=batch).items()}
        yield from profile_rows(outputs)


def build_baseline(rows: Iterable[dict], classes: list[str], split: str = "", sample: int = BASELINE_SAMPLE) -> dict:
    counts = dict.fromkeys(classes, 0)
    reservoir = Reservoir(sample)
    for row in rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
        reservoir.add(row)
    picked = reservoir.rows

    def rounded(values):
        return np.round(np.asarray(values, np.float64), DECIMALS).tolist()

    return {"format": FORMAT, "split": split, "images": reservoir.seen, "classes": classes,
            "class_counts": [counts[c] for c in classes], "image_stats_names": list(IMAGE_STATS),
            "rows": {"label": [r["label"] for r in picked],
                     "confidence": rounded([max(r["probabilities"]) for r in picked]),
                     "embedding": rounded([r["embedding"] for r in picked]),
                     "image_stats": rounded([r["image_stats"] for r in picked])}}


def write_baseline(model_dir: str, data_dir: str, split: str, loaded=None) -> dict | None:
    """baseline.json beside the SavedModel in model_dir from the split's images; None (and nothing written) for
    a SavedModel without a serving_profile signature (exported before it existed, or no penultimate layer)."""
    from components.convert.schema import read_labels
    from components.model_store import load_saved_model

    loaded = loaded or load_saved_model(model_dir)
    if PROFILE_SIGNATURE not in loaded.signatures:
        log.warning("no %s signature in %s: no drift baseline written", PROFILE_SIGNATURE, model_dir)
        return None
    from components.train.data import encoded_images

    sent = encoded_images(data_dir, split, as_sent=True).batch(64)  # the images as a client sends them
    baseline = build_baseline(profile_images(loaded, sent), read_labels(data_dir), split)
    storage.write_text(storage.join(model_dir, BASELINE_FILE), json.dumps(baseline, separators=(",", ":")))
    log.info("drift baseline of %d %s images written to %s", baseline["images"], split, model_dir)
    return baseline
