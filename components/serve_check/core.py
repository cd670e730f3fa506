"""The serving check: the candidate SavedModel served by the real server (`catsdogs serve`, in its own process),
asked in every request format we document, measured, and blessed or refused before anything publishes it.

TFX's InfraValidator does this for TF Serving and does not run on Vertex AI; here the serving image runs it.

1. Expected answers come from the SavedModel's own signatures, as evaluation calls them: `serving_default` on
   the encoded images, `predict_pixels` on their decoded pixels. A model whose signatures fail is refused here.
2. `catsdogs serve MODEL_DIR --port 0` starts on 127.0.0.1; a server that does not start is refused.
3. Each format is sent for the sample of held-out images: Vertex `{"instances": [{"b64": ...}]}` on /predict,
   TF Serving's row `{"instances": [{"image_bytes": {"b64": ...}}]}` and column `{"inputs": {"image_bytes": [...]}}`
   forms on /v1/models/NAME:predict, and raw HxWx3 pixels; labels must equal the expected ones and every
   probability be within `TOLERANCE` of them.
4. p50/p99 latency of one-image requests at concurrency 1, throughput (images/s) at concurrency N, each for a
   fixed time, and the server process's peak resident memory (VmHWM); each is held against its limit (0: none).

Long: the four steps above, read top to bottom in that order; each part (the sample, the server process, the
load) serves only this check.
"""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from components import storage
from components.contracts import CSV_COLUMNS, HELD_OUT_SPLITS, SAVED_MODEL_FILE
from components.errors import InputError
from components.model_store import one_line, training_info

CHECK_FILE = "serving_check.json"
TOLERANCE = 1e-5  # the largest difference between a served probability and the SavedModel's own
MODEL_NAME = "candidate"  # NAME in /v1/models/NAME while the check runs
START_TIMEOUT_S = 300  # a hang guard for the server's start (TensorFlow import, model load, warm-up)
REQUEST_TIMEOUT_S = 60
FORMATS = ("vertex_b64", "tf_serving_row", "tf_serving_column", "raw_pixels")
SERVING_LINE = re.compile(r"^serving .* at (?P<url>http://\S+) ", re.M)


@dataclass(frozen=True)
class Limits:
    """What the candidate must reach to be blessed; 0 means no limit."""

    max_p99_ms: float = 0.0
    min_throughput: float = 0.0
    max_memory_mb: float = 0.0
    concurrency: int = 8  # the N of the throughput measurement
    seconds: float = 3.0  # how long each measurement runs
    sample: int = 8  # held-out images sent in each format

    def check(self) -> None:
        for name in ("max_p99_ms", "min_throughput", "max_memory_mb"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be 0 (no limit) or more, "
                                 f"got {getattr(self, name)}")
        if self.concurrency < 1 or self.sample < 1 or self.seconds <= 0:
            raise InputError("--concurrency and --sample must be at least 1 and --seconds above 0")


@dataclass
class ServingCheck:
    model_dir: str
    blessed: bool = False
    reasons: list[str] = field(default_factory=list)  # why it was refused (empty when blessed)
    images: int = 0
    formats: dict = field(default_factory=dict)  # format -> {"requests", "labels_equal", "max_difference"}
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None  # images per second at `concurrency`
    concurrency: int = 0
    errors: int = 0  # failed requests while measuring
    peak_memory_mb: float | None = None
    limits: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line: the decision and the figures."""
        figures = (f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms at c=1, {self.throughput:.1f} img/s at "
                   f"c={self.concurrency}, peak memory {self.peak_memory_mb or 0:.0f} MB"
                   if self.p99_ms is not None else "not measured")
        formats = f"{sum(f['labels_equal'] for f in self.formats.values())}/{len(FORMATS)} request formats agree"
        if self.blessed:
            return f"serving check blessed: {formats} on {self.images} images; {figures}"
        return f"serving check refused: {'; '.join(self.reasons)} ({figures})"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


# --- the held-out images ------------------------------------------------------------------------------------


def sample_images(source: str, count: int) -> list[bytes]:
    """Up to `count` encoded images: from a TFRecord folder (`catsdogs convert`'s output: its held-out split),
    a CSV (split,image_uri,label: its TEST rows, else VALIDATION, else all) or a folder of image files."""
    from components.image_files import BadImage, open_header

    if storage.exists(storage.join(source, "labels.json")):
        from components.train.data import held_out_images

        images = held_out_images(source, count)
    elif source.lower().endswith(".csv"):
        images = [storage.read_bytes(uri) for uri in _csv_uris(source)[:count]]
    else:
        images = []
        for path in storage.walk_files(source):
            data = storage.read_bytes(storage.join(source, path))
            try:
                open_header(data)
            except BadImage:
                continue
            images.append(data)
            if len(images) == count:
                break
    if not images:
        raise InputError(f"{source}: no images to check serving with (a TFRecord folder, a CSV or images)")
    return images


def _csv_uris(path: str) -> list[str]:
    rows = list(csv.DictReader(io.StringIO(storage.read_text(path))))
    if rows and set(CSV_COLUMNS) - set(rows[0]):
        raise InputError(f"{path}: expected the columns {','.join(CSV_COLUMNS)}")
    for split in HELD_OUT_SPLITS:
        held_out = [r["image_uri"] for r in rows if r["split"] == split]
        if held_out:
            return held_out
    return [r["image_uri"] for r in rows]


# --- what the SavedModel itself answers --------------------------------------------------------------------------


def expected_answers(model_dir: str, images: list[bytes]) -> tuple[dict, list[np.ndarray]]:
    """({"labels", "probabilities"} from serving_default on the images, and from predict_pixels on their pixels),
    the uint8 pixels; InputError naming the signature that fails."""
    import tensorflow as tf

    from components.model_store import load_saved_model

    try:
        loaded = load_saved_model(model_dir)
    except Exception as e:  # whatever stops it loading refuses it
        raise InputError(f"the SavedModel does not load: {one_line(e)}") from e
    pixels = [tf.io.decode_image(data, channels=3, expand_animations=False).numpy() for data in images]
    answers = {}
    try:
        out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
        answers["bytes"] = _answer(out)
        rows = [_answer(loaded.signatures["predict_pixels"](pixels=tf.constant(p[np.newaxis], tf.float32)))
                for p in pixels]
        answers["pixels"] = {"labels": [r["labels"][0] for r in rows], "classes": rows[0]["classes"],
                             "probabilities": np.concatenate([r["probabilities"] for r in rows])}
    except Exception as e:  # a missing or failing signature refuses it
        raise InputError(f"the SavedModel's signatures do not answer: {one_line(e)}") from e
    return answers, pixels


def _answer(outputs) -> dict:
    return {"labels": [label.decode() for label in outputs["labels"].numpy()],
            "classes": [c.decode() for c in outputs["classes"].numpy()[0]],
            "probabilities": outputs["probabilities"].numpy()}


# --- the real server ------------------------------------------------------------------------------------------


class ServerProcess:
    """`catsdogs serve MODEL_DIR` on 127.0.0.1 with a free port, in its own process (so its memory is its own)."""

    def __init__(self, model_dir: str):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="catsdogs-serve-", suffix=".log")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "serve", model_dir, "--host", "127.0.0.1", "--port", "0",
             "--poll-seconds", "0", "--model-name", MODEL_NAME],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            self.host, self.port = self._wait_for_start()
        except BaseException:
            self.stop()  # one that hangs in its start is not left running
            raise

    def _output(self) -> str:
        with open(self.log.name) as f:
            return f.read()

    def _wait_for_start(self) -> tuple[str, int]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = SERVING_LINE.search(self._output())
            if found:
                url = found["url"].removeprefix("http://").rstrip("/")
                host, port = url.rsplit(":", 1)
                return host, int(port)
            if self.process.poll() is not None:
                lines = [line for line in self._output().splitlines() if line.strip()]
                raise InputError(f"the server did not start (exit {self.process.returncode}): "
                                 f"{lines[-1] if lines else 'no output'}")
            time.sleep(0.1)
        raise InputError(f"the server did not start within {START_TIMEOUT_S} s")

    def peak_memory_mb(self) -> float | None:
        """The server process's peak resident memory (Linux's VmHWM), None where /proc does not say."""
        try:
            with open(f"/proc/{self.process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def post(self, path: str, payload: dict, connection: http.client.HTTPConnection | None = None) -> dict:
        """The JSON answer; InputError with the status and error for anything but 200."""
        own = connection is None
        connection = connection or http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            connection.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
            response = connection.getresponse()
            body = response.read()
        finally:
            if own:
                connection.close()
        if response.status != 200:
            raise InputError(f"POST {path} answered {response.status}: {body[:200].decode(errors='replace')}")
        return json.loads(body)


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def _served(server: ServerProcess, fmt: str, images: list[bytes], pixels: list[np.ndarray]) -> tuple[list, list]:
    """(labels, [{class: probability}]) the server answers for the images in one format."""
    model_route = f"/v1/models/{MODEL_NAME}:predict"
    if fmt == "raw_pixels":  # one request per image: an image's pixels as JSON are ~4 bytes per value
        rows = [server.post("/predict", {"instances": [p.tolist()]})["predictions"][0] for p in pixels]
    elif fmt == "tf_serving_column":
        outputs = server.post(model_route, {"inputs": {"image_bytes": [_b64(i) for i in images]}})["outputs"]
        return outputs["label"], outputs["probabilities"]
    elif fmt == "tf_serving_row":
        rows = server.post(model_route, {"instances": [{"image_bytes": _b64(i)} for i in images]})["predictions"]
    else:
        rows = server.post("/predict", {"instances": [_b64(i) for i in images]})["predictions"]
    return [r["label"] for r in rows], [r["probabilities"] for r in rows]


def compare(labels: list, probabilities: list, expected: dict) -> dict:
    """{"requests", "labels_equal", "max_difference"} of a format's answers against the SavedModel's own."""
    served = np.array([[p[c] for c in expected["classes"]] for p in probabilities], np.float64)
    difference = (float(np.abs(served - expected["probabilities"]).max())
                  if served.shape == expected["probabilities"].shape else None)  # None: not comparable
    return {"requests": len(labels), "labels_equal": list(labels) == list(expected["labels"]),
            "max_difference": difference}


# --- the measurements -----------------------------------------------------------------------------------------


def _load(server: ServerProcess, bodies: list[dict], seconds: float, concurrency: int) -> tuple[list[float], int]:
    """Sends one-image requests from `concurrency` threads for `seconds`: (latencies in s, failed requests)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=REQUEST_TIMEOUT_S)
        mine, failed, n = [], 0, offset
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                server.post("/predict", bodies[n % len(bodies)], connection)
                mine.append(time.perf_counter() - start)
            except (InputError, OSError, http.client.HTTPException):
                failed += 1
                connection.close()
                connection = http.client.HTTPConnection(server.host, server.port, timeout=REQUEST_TIMEOUT_S)
            n += 1
        connection.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


def measure(server: ServerProcess, images: list[bytes], result: ServingCheck, limits: Limits) -> None:
    bodies = [{"instances": [_b64(i)]} for i in images]
    latencies, errors = _load(server, bodies, limits.seconds, 1)
    if latencies:
        result.p50_ms = float(np.percentile(latencies, 50) * 1000)
        result.p99_ms = float(np.percentile(latencies, 99) * 1000)
    start = time.monotonic()
    answered, more_errors = _load(server, bodies, limits.seconds, limits.concurrency)
    result.throughput = len(answered) / (time.monotonic() - start)
    result.concurrency = limits.concurrency
    result.errors = errors + more_errors
    result.peak_memory_mb = server.peak_memory_mb()


def judge(result: ServingCheck, limits: Limits) -> None:
    """Adds a reason for each limit the figures miss; blessed when there is no reason."""
    if result.errors:
        result.reasons.append(f"{result.errors} requests failed while measuring")
    if result.p99_ms is None:
        result.reasons.append("no request answered at concurrency 1")
    elif limits.max_p99_ms and result.p99_ms > limits.max_p99_ms:
        result.reasons.append(f"p99 {result.p99_ms:.1f} ms is over max_p99_ms {limits.max_p99_ms:g}")
    if limits.min_throughput and (result.throughput or 0) < limits.min_throughput:
        result.reasons.append(f"throughput {result.throughput or 0:.1f} img/s is under min_throughput "
                              f"{limits.min_throughput:g}")
    if limits.max_memory_mb and result.peak_memory_mb and result.peak_memory_mb > limits.max_memory_mb:
        result.reasons.append(f"peak memory {result.peak_memory_mb:.0f} MB is over max_memory_mb "
                              f"{limits.max_memory_mb:g}")
    result.blessed = not result.reasons


def check_serving(model_dir: str, images_source: str, limits: Limits = Limits()) -> ServingCheck:
    """The serving check of the SavedModel in model_dir with held-out images from images_source (see
    sample_images). Refusals are in the result (`blessed` False, `reasons`); InputError only for bad arguments."""
    limits.check()
    if not storage.exists(storage.join(model_dir, SAVED_MODEL_FILE)):
        raise InputError(f"{model_dir} holds no {SAVED_MODEL_FILE}: is it the output of `catsdogs train`?")
    result = ServingCheck(model_dir, limits=asdict(limits))
    images = sample_images(images_source, limits.sample)
    result.images = len(images)
    try:
        expected, pixels = expected_answers(model_dir, images)
    except InputError as e:
        result.reasons.append(str(e))
        return result
    try:
        server = ServerProcess(model_dir)
    except InputError as e:
        result.reasons.append(str(e))
        return result
    try:
        for fmt in FORMATS:
            try:
                labels, probabilities = _served(server, fmt, images, pixels)
                compared = compare(labels, probabilities, expected["pixels" if fmt == "raw_pixels" else
                                                                         "bytes"])
            except (InputError, OSError, http.client.HTTPException, KeyError, TypeError) as e:
                compared = {"requests": 0, "labels_equal": False, "max_difference": None, "error": one_line(e)}
            result.formats[fmt] = compared
            difference = compared["max_difference"]
            if "error" in compared:
                result.reasons.append(f"{fmt}: {compared['error']}")
            elif not compared["labels_equal"]:
                result.reasons.append(f"{fmt}: the labels differ from the SavedModel's own")
            elif difference is None or difference > TOLERANCE:
                result.reasons.append(f"{fmt}: the probabilities differ from the SavedModel's own by "
                                      f"{difference if difference is not None else 'shape'} (over {TOLERANCE:g})")
        measure(server, images, result, limits)
    finally:
        server.stop()
    judge(result, limits)
    return result


def default_images(model_dir: str) -> str:
    """The TFRecords the model was trained on (training.json's `data`): their held-out split."""
    data = training_info(model_dir).get("data", "")
    if not data:
        raise InputError(f"{model_dir}: no training data recorded in training.json; pass --images CSV_OR_DIR")
    return data
