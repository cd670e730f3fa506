"""One loaded model version: decoding of request instances into the model's pixels, and its prediction call.

An instance is first checked (`read_instance`: base64, the image header's size, the pixel array's shape)
without decoding, so the server can weigh it against its pixel budget; decoding (and resizing to the model's
input size) then runs in a decode thread, so many requests decode at once while the model runs; every instance
then has the same [S, S, 3] shape and any mix of requests can share one `predict_pixels` call.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np
import tensorflow as tf

from components import warmup
from components.contracts import PROFILE_PIXELS_SIGNATURE
from components.decode import decode_and_resize
from components.image_files import BadImage, open_header
from components.model_store import check_answers, input_size, load_saved_model, probe_pixels

log = logging.getLogger(__name__)



class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def bad_request(message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message)


@dataclass
class Predictions:
    """The model's outputs for one request's instances."""

    classes: list[str]
    labels: list[str]
    probabilities: np.ndarray  # [N, K]
    embedding: np.ndarray | None = None  # [N, D], from PROFILE_PIXELS_SIGNATURE only
    image_stats: np.ndarray | None = None  # [N, 5], from LoadedModel.decode_with_stats (set by the server)

    def rows_between(self, start: int, end: int) -> Predictions:
        """The predictions of instances start..end-1 (one request's share of a batch)."""
        return Predictions(self.classes, self.labels[start:end], self.probabilities[start:end],
                           None if self.embedding is None else self.embedding[start:end],
                           None if self.image_stats is None else self.image_stats[start:end])

    def check_finite(self) -> None:
        """RequestError 500 when the model produced NaN or infinity (a diverged model): JSON has no NaN."""
        if not np.isfinite(self.probabilities).all():
            raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                               "the model produced non-finite output (NaN or infinity) for this request: "
                               "it is probably a diverged training run; serve another version")

    def rows(self) -> list[dict]:
        return [{"label": label, "probabilities": {c: float(p) for c, p in zip(self.classes, probs)}}
                for label, probs in zip(self.labels, self.probabilities)]


class LoadedModel:
    def __init__(self, name: str, version: int, path: str, profile: bool = False):
        self.name, self.version, self.path = name, version, path
        self.warmup_replayed = 0  # warm-up records replayed when it loaded
        self.warmup_bodies: list[bytes] = []  # the same as request bodies, for the server's own path (server.py)
        loaded = load_saved_model(path)
        self._loaded = loaded  # the signatures' variables live as long as this object
        # With --log-requests a version's profile signature (components/contracts.py) replaces predict_pixels: one
        # model call gives both the answer and the logged record.
        self.profiled = profile and PROFILE_PIXELS_SIGNATURE in loaded.signatures
        self._predict = loaded.signatures[PROFILE_PIXELS_SIGNATURE if self.profiled else "predict_pixels"]
        size = self.size = input_size(loaded)
        # The same preprocessing as the SavedModel's own signatures (and training), one image at a time.
        self._decode = tf.function(lambda image_bytes: decode_and_resize(image_bytes, size),
                                   input_signature=[tf.TensorSpec([], tf.string)])
        self._resize = tf.function(lambda pixels: tf.image.resize(pixels, [size, size]),
                                   input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
        if self.profiled:  # the image statistics drift monitoring compares, from the same decode
            from components.monitor.profile import decode_with_stats, image_stats

            self._decode_stats = tf.function(lambda image_bytes: decode_with_stats(image_bytes, size),
                                             input_signature=[tf.TensorSpec([], tf.string)])
            self._pixel_stats = tf.function(lambda p: image_stats(p, tf.shape(p)[0], tf.shape(p)[1]),
                                            input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])

    def __repr__(self) -> str:
        return f"{self.name} version {self.version} ({self.path})"

    def instance_pixels(self, instance, index: int) -> np.ndarray:
        """One request instance -> float32 [S, S, 3] pixels; RequestError (400) saying what is wrong."""
        return self.decode(read_instance(instance, index))

    def decode(self, item: Instance) -> np.ndarray:
        """The model's float32 [S, S, 3] pixels of one checked instance (decoding is the costly part)."""
        if item.pixels is not None:
            return self._resize(item.pixels).numpy()
        try:
            return self._decode(tf.constant(item.image)).numpy()
        except tf.errors.InvalidArgumentError as e:
            raise bad_request(f"instance {item.index}: cannot decode the image: {e.message}") from e

    def decode_with_stats(self, item: Instance) -> tuple[np.ndarray, np.ndarray]:
        """decode()'s pixels and the image's float32 [5] statistics (components/monitor/profile.py IMAGE_STATS,
        the baseline's function), from one decode; for a profiled version only."""
        if item.pixels is not None:
            return self._resize(item.pixels).numpy(), self._pixel_stats(item.pixels).numpy()
        try:
            pixels, stats = self._decode_stats(tf.constant(item.image))
        except tf.errors.InvalidArgumentError as e:
            raise bad_request(f"instance {item.index}: cannot decode the image: {e.message}") from e
        return pixels.numpy(), stats.numpy()

    def predict(self, pixels: np.ndarray) -> Predictions:
        """Predictions for float32 pixels [N, S, S, 3] in one model call."""
        outputs = self._predict(pixels=tf.constant(pixels))
        return Predictions(
            classes=[c.decode() for c in outputs["classes"].numpy()[0]],
            labels=[label.decode() for label in outputs["labels"].numpy()],
            probabilities=outputs["probabilities"].numpy(),
            embedding=outputs["embedding"].numpy() if "embedding" in outputs else None,
        )

    def warm_up(self, max_batch: int) -> None:
        """Runs every path once so the first requests do not pay for graph and kernel set-up: the SavedModel's
        warm-up records (real held-out images, components/warmup.py) when it has them, else a blank image;
        UnusableVersion when the model answers the model store's probe with NaN or infinity (it is then not
        served)."""
        pixels = self._replay_warmup()
        if pixels is None:
            image = tf.io.encode_jpeg(tf.zeros([32, 32, 3], tf.uint8)).numpy()
            pixels = self.instance_pixels({"b64": base64.b64encode(image).decode()}, 0)
            self.warmup_bodies = [json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()]
        self.instance_pixels([[[0, 0, 0]]], 0)
        for size in sorted({1, max_batch}):
            self.predict(np.repeat(pixels[np.newaxis], size, axis=0))
        check_answers(self.predict(probe_pixels(self.size)).probabilities)

    def _replay_warmup(self) -> np.ndarray | None:
        """Sends each warm-up record's images through decoding and the model as a request would; the last image's
        pixels, or None when the SavedModel has no usable records (a broken file is logged, not fatal)."""
        try:
            requests = warmup.read_warmup(self.path)
        except Exception as e:  # noqa: BLE001 - a damaged warm-up file must not stop a good model being served
            log.warning("%r: cannot read its warm-up records (%s); warming up with a blank image", self, e)
            return None
        pixels, replayed = None, 0
        for request in requests:
            images = request.inputs.get(warmup.INPUT)
            if request.signature_name != warmup.SIGNATURE or not images:
                continue
            try:
                # As a request's {"b64": ...}: header check (PIL's first open loads its plugins), decoding, model.
                batch = np.stack([self.instance_pixels({"b64": base64.b64encode(image).decode()}, i)
                                  for i, image in enumerate(images)])
            except RequestError as e:
                log.warning("%r: skipping a warm-up record: %s", self, e)
                continue
            self.predict(batch)
            pixels, replayed = batch[-1], replayed + 1
            self.warmup_bodies.append(json.dumps(
                {"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}).encode())
        self.warmup_replayed = replayed
        if requests:
            log.info("%r: %d warm-up records replayed from %s", self, replayed, warmup.WARMUP_FILE)
        return pixels


@dataclass
class Instance:
    """One request instance, checked but not yet decoded: encoded image bytes or an HxWx3 pixel array."""

    index: int
    image: bytes | None = None
    pixels: np.ndarray | None = None
    area: int = 0  # width x height of the image (from its header) or of the array: the decoding work


def read_instance(instance, index: int) -> Instance:
    """Checks one request instance, reading only an image's header; RequestError (400) saying what is wrong."""
    if isinstance(instance, dict) and isinstance(instance.get("image_bytes"), dict):
        instance = instance["image_bytes"]
    if isinstance(instance, dict) and "b64" in instance:
        data = _b64_bytes(instance["b64"], index)
        width, height = _image_size(data, index)
        return Instance(index, image=data, area=width * height)
    if isinstance(instance, dict) and "pixels" in instance:
        instance = instance["pixels"]
    if isinstance(instance, list):
        pixels = _pixel_array(instance, index)
        return Instance(index, pixels=pixels, area=pixels.shape[0] * pixels.shape[1])
    raise bad_request(f'instance {index}: expected {{"b64": "<base64 image>"}}, '
                      f'{{"image_bytes": {{"b64": ...}}}} or an HxWx3 array of pixels')


def _image_size(data: bytes, index: int) -> tuple[int, int]:
    """(width, height) from the image's header, before any pixel is decoded."""
    try:
        return open_header(data).size
    except BadImage as e:
        raise bad_request(f"instance {index}: {e}") from e


def _b64_bytes(text, index: int) -> bytes:
    if not isinstance(text, str):
        raise bad_request(f'instance {index}: "b64" must be a base64 string')
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"instance {index}: bad base64: {e}") from e


def _pixel_array(values: list, index: int) -> np.ndarray:
    try:
        pixels = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # ragged, not numbers, over 2**1024
        raise bad_request(f"instance {index}: pixels must be a rectangular HxWx3 array of numbers") from e
    if pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise bad_request(f"instance {index}: pixel array has shape {list(pixels.shape)}, expected [H, W, 3]")
    if not np.isfinite(pixels).all():
        raise bad_request(f"instance {index}: pixels must be finite numbers (0..255)")
    return pixels
