"""What every peer server script shares: load the SavedModel, call its `serving_default`, answer as we do.

Peers run in their own virtual environments (KServe's cannot share ours), so this module imports only
TensorFlow and the standard library; the peer scripts import it by path. A peer calls `serving_default`
(`image_bytes`: a batch of encoded images, decoded and resized inside the graph), which is what a server that
knows nothing of catsdogs would call: the signature TF Serving and Vertex's `{"b64": ...}` use.
"""

from __future__ import annotations

import base64
import os
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class SavedModel:
    """The SavedModel's `serving_default`, warmed with `warm_image` (a batch of 1 and of 16) before serving."""

    def __init__(self, model_dir: str, warm_image: bytes | None = None):
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(model_dir)  # the signature needs its object alive
        self._serve = self._loaded.signatures["serving_default"]
        if warm_image is not None:
            for size in (1, 16):
                self.predict([warm_image] * size)

    def predict(self, images: list[bytes]) -> list[dict]:
        """One model call for all `images`; answers as `catsdogs serve` gives them."""
        outputs = self._serve(image_bytes=self._tf.constant(images))
        probabilities = outputs["probabilities"].numpy()
        labels = outputs["labels"].numpy()
        classes = outputs["classes"].numpy()
        return [{"label": label.decode(), "probabilities": {c.decode(): float(p) for c, p in zip(names, row)}}
                for label, names, row in zip(labels, classes, probabilities)]


def instance_bytes(body: dict) -> list[bytes]:
    """The encoded images of a Vertex / TF Serving row-format request: {"instances": [{"b64": ...}, ...]}."""
    return [base64.b64decode(instance["b64"]) for instance in body["instances"]]


def free_port(host: str) -> int:
    """A port nothing listens on now (servers that cannot bind port 0 and report it get one of these)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def args() -> tuple[str, str, int, bytes]:
    """(model_dir, host, port, warm-up image bytes) from a peer script's command line: MODEL_DIR HOST PORT IMAGE."""
    model_dir, host, port, image = sys.argv[1:5]
    with open(image, "rb") as f:
        return model_dir, host, int(port), f.read()
