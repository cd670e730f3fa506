"""Request logging for drift monitoring, through `catsdogs serve --log-requests`: one record per answered image
with the answer's label and probabilities and the model's profile, the sample rate, a full buffer that drops
and counts instead of slowing answers, everything flushed by the SIGTERM drain, and gs:// folders."""

import base64
import datetime
import io
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from components import storage
from components.contracts import REQUEST_LOG_PREFIX

WAIT_S = 120  # a hang guard, never a speed check
SIZE = 8
EMBEDDING_DIM, STATS = 16, 5


def build_profiled_model(model_dir: str, with_profile: bool = True) -> str:
    """A SavedModel with predict_pixels, model_info and the profile_pixels signature (predict_pixels' outputs plus
    embedding [N, 16]), as `catsdogs train` exports them: the dogs probability rises with the red channel's mean.
    The server adds image_stats while it decodes."""
    import tensorflow as tf

    names = tf.constant(["cats", "dogs"])

    def predict(pixels):
        means = tf.reduce_mean(tf.image.resize(pixels, [SIZE, SIZE]), axis=[1, 2])  # [N, 3]
        dogs = tf.sigmoid((means[:, 0] - 128.0) / 32.0)
        probabilities = tf.stack([1.0 - dogs, dogs], axis=-1)
        batch = tf.shape(probabilities)[0]
        return {"probabilities": probabilities, "labels": tf.gather(names, tf.argmax(probabilities, axis=-1)),
                "classes": tf.tile(names[tf.newaxis, :], [batch, 1])}, means

    def profile(pixels):
        outputs, means = predict(pixels)
        outputs["embedding"] = tf.tile(means / 255.0, [1, 6])[:, :EMBEDDING_DIM]
        return outputs

    pixels = tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")
    module = tf.Module()
    module.predict_pixels = tf.function(lambda pixels: predict(pixels)[0], input_signature=[pixels])
    if with_profile:  # (an attribute holding a tf.function with a signature is saved as a signature too)
        module.profile_pixels = tf.function(profile, input_signature=[pixels])
    module.model_info = tf.function(lambda: {"image_size": tf.constant(SIZE), "classes": names}, input_signature=[])
    signatures = {"predict_pixels": module.predict_pixels, "model_info": module.model_info}
    if with_profile:
        signatures["profile_pixels"] = module.profile_pixels
    tf.saved_model.save(module, model_dir, signatures=signatures)
    return model_dir


@pytest.fixture(scope="module")
def profiled_base(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("models") / "catsdogs"
    build_profiled_model(str(base / "1"))
    return str(base)


@pytest.fixture(scope="module")
def plain_base(tmp_path_factory) -> str:
    """A version without the profile signature (a model exported before it existed, or one whose penultimate
    layer cannot be found)."""
    base = tmp_path_factory.mktemp("plain") / "catsdogs"
    build_profiled_model(str(base / "1"), with_profile=False)
    return str(base)


def _jpeg(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 16), color).save(out, "JPEG")
    return out.getvalue()


def _body(*images: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}).encode()


def _post(url: str, body: bytes) -> dict:
    request = urllib.request.Request(url + "/predict", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        assert response.status == 200
        return json.loads(response.read())


class Served:
    """`catsdogs serve` as a subprocess; stop() sends SIGTERM and returns everything it printed."""

    def __init__(self, base: str, *flags: str, env: dict | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "serve", base, "--port", "0", "--poll-seconds", "0", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        line = self.process.stdout.readline()
        if "serving catsdogs" not in line:
            self.process.kill()
            raise AssertionError(f"the server did not start: {line}{self.process.stderr.read()}")
        self.url = line.split(" at ", 1)[1].split()[0]

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=WAIT_S) as response:
            return json.loads(response.read())

    def stop(self) -> tuple[str, str]:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=WAIT_S)
        assert self.process.returncode == 0, err
        return out, err


def _records(folder: str) -> list[dict]:
    names = sorted(storage.walk_files(folder))
    assert all(n.startswith(REQUEST_LOG_PREFIX) and n.endswith(".jsonl") for n in names), names  # no leftovers
    return [json.loads(line) for n in names for line in storage.read_text(storage.join(folder, n)).splitlines()]


def _summary(out: str) -> dict:
    """The counters of the line `catsdogs serve` prints when it stops."""
    line = next(x for x in out.splitlines() if x.startswith("request log: "))
    words = line.split()
    return {"written": int(words[2]), "files": int(words[5]), "dropped": int(words[words.index("dropped") - 1])}


def test_every_answered_image_is_logged_with_the_answer_and_the_profile_and_sigterm_flushes_them(
        profiled_base, tmp_path):
    logs = tmp_path / "logs"
    served = Served(profiled_base, "--log-requests", str(logs))
    started = datetime.datetime.now(datetime.UTC)
    try:
        colors = [(250, 20, 20), (10, 200, 10), (100, 100, 100)]
        answers = [_post(served.url, _body(*(_jpeg(c) for c in colors[:n]))) for n in (1, 2, 3)]
        pixels = json.dumps({"instances": [[[[255.0, 0.0, 0.0]] * 4] * 4]}).encode()  # an array instance too
        answers.append(_post(served.url, pixels))
        assert served.health()["request_log"]["sampled"] == 7
    finally:
        out, _ = served.stop()
    ended = datetime.datetime.now(datetime.UTC)
    # Files are written every 10,000 records or 60 s: these 7 reach the folder through the SIGTERM drain.
    records = _records(str(logs))
    assert _summary(out) == {"written": 7, "files": 1, "dropped": 0}
    assert len(records) == 7
    answered = [(p["label"], [round(v, 4) for v in p["probabilities"].values()])
                for a in answers for p in a["predictions"]]
    logged = [(r["label"], [round(v, 4) for v in r["probabilities"]]) for r in records]
    assert sorted(logged) == sorted(answered)
    assert {r["label"] for r in records} == {"cats", "dogs"}
    for r in records:
        assert set(r) == {"time", "version", "label", "probabilities", "embedding", "image_stats"}
        assert r["version"] == "1" and r["time"].endswith("Z")
        assert started <= datetime.datetime.fromisoformat(r["time"]) <= ended
        assert len(r["embedding"]) == EMBEDDING_DIM and len(r["image_stats"]) == STATS
    # image_stats (width, height, brightness, colourfulness, greyscale) of what was sent: the 20x16 JPEGs and the
    # 4x4 array; one grey image, whose brightness is its grey level
    assert sorted(tuple(r["image_stats"][:2]) for r in records) == [(4.0, 4.0)] + [(20.0, 16.0)] * 6
    grey = [r for r in records if r["image_stats"][4] == 1.0]
    assert len(grey) == 1 and abs(grey[0]["image_stats"][2] - 100 / 255) < 0.02 and grey[0]["label"] == "cats"
    assert all(r["image_stats"][3] > 50 for r in records if r["image_stats"][4] == 0.0)  # vivid: colourful


def test_a_version_without_the_profile_signature_is_logged_without_embedding(plain_base, tmp_path):
    logs = tmp_path / "logs"
    served = Served(plain_base, "--log-requests", str(logs))
    try:
        _post(served.url, _body(_jpeg((200, 30, 30)), _jpeg((30, 30, 200))))
    finally:
        out, err = served.stop()
    assert "has no profile_pixels signature" in err
    records = _records(str(logs))
    assert len(records) == 2
    assert all(set(r) == {"time", "version", "label", "probabilities"} for r in records)


def test_the_sample_rate_is_respected(profiled_base, tmp_path):
    logs = tmp_path / "logs"
    served = Served(profiled_base, "--log-requests", str(logs), "--log-sample-rate", "0.25")
    body = _body(*[_jpeg((i * 10, 50, 50)) for i in range(20)])
    try:
        for _ in range(20):
            assert len(_post(served.url, body)["predictions"]) == 20
    finally:
        out, _ = served.stop()
    written = len(_records(str(logs)))
    assert _summary(out)["written"] == written
    # 400 images at 0.25: mean 100, sd 8.7; outside 55..145 (over 5 sd) for a correct sampler about 1 in 10^6
    assert 55 <= written <= 145


def test_a_full_buffer_drops_and_counts_records_and_every_request_is_answered(profiled_base, tmp_path):
    logs = tmp_path / "logs"
    # A one-record buffer stands for a sink far slower than the requests: 32 images a request arrive at once.
    served = Served(profiled_base, "--log-requests", str(logs), "--log-buffer", "1")
    body = _body(*[_jpeg((i * 7, 90, 90)) for i in range(32)])
    answered = []
    lock = threading.Lock()

    def client(_):
        for _ in range(5):
            n = len(_post(served.url, body)["predictions"])
            with lock:
                answered.append(n)

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(8)))
        health = served.health()["request_log"]
    finally:
        out, _ = served.stop()
    assert answered == [32] * 40
    summary = _summary(out)
    assert health["dropped"] > 0 and summary["dropped"] >= health["dropped"]
    assert summary["written"] + summary["dropped"] == 40 * 32  # every image is either logged or counted
    assert len(_records(str(logs))) == summary["written"]


def test_settings_from_the_environment_as_on_vertex_and_a_gcs_folder(profiled_base, gcs_bucket):
    folder = f"{gcs_bucket}/request-logs"
    served = Served(profiled_base, env={"CATSDOGS_LOG_REQUESTS": folder, "CATSDOGS_LOG_SAMPLE_RATE": "1"})
    try:
        _post(served.url, _body(_jpeg((250, 10, 10)), _jpeg((10, 10, 250))))
    finally:
        out, _ = served.stop()
    records = _records(folder)
    assert sorted(r["label"] for r in records) == ["cats", "dogs"]
    assert _summary(out)["written"] == 2 and "request-logs" in out


@pytest.mark.parametrize("flags, message", [
    (["--log-sample-rate", "0"], "--log-sample-rate must be in (0, 1], got 0.0"),
    (["--log-sample-rate", "1.5"], "--log-sample-rate must be in (0, 1], got 1.5"),
    (["--log-buffer", "0"], "--log-buffer must be at least 1 record, got 0"),
])
def test_bad_logging_flags_are_one_line_errors(profiled_base, tmp_path, flags, message):
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", profiled_base, "--port", "0",
                             "--log-requests", str(tmp_path / "logs"), *flags], capture_output=True, text=True,
                            timeout=WAIT_S)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"catsdogs serve: error: {message}"
    assert not Path(tmp_path / "logs").exists()


# --- on Vertex AI: the deployment sets the serving container's settings ---

DEPLOY = ["deploy", "gs://bucket/runs/7/model", "--project", "p", "--location", "europe-west4",
          "--images-registry", "europe-west4-docker.pkg.dev/p/catsdogs", "--dry-run"]


def _container_spec(capsys) -> dict:
    calls = json.loads(capsys.readouterr().out)["calls"]
    [upload] = [c for c in calls if c["method"] == "ModelService.UploadModel"]
    return upload["request"]["model"]["containerSpec"]


def test_deploy_passes_the_log_folder_and_rate_to_the_serving_container(capsys):
    from pipelines.cli import main

    assert main([*DEPLOY, "--log-requests", "gs://bucket/request-logs", "--log-sample-rate", "0.1"]) == 0
    assert _container_spec(capsys)["env"] == [{"name": "CATSDOGS_LOG_REQUESTS", "value": "gs://bucket/request-logs"},
                                              {"name": "CATSDOGS_LOG_SAMPLE_RATE", "value": "0.1"}]
    assert main(DEPLOY) == 0
    assert "env" not in _container_spec(capsys)  # off by default
    assert main([*DEPLOY, "--log-requests", "logs/"]) == 2
    assert "--log-requests must be gs://" in capsys.readouterr().err


def test_the_vertex_pipeline_passes_its_log_parameters_to_the_serving_container(tmp_path):
    import yaml

    from pipelines.cli import main

    path = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(path), "--images-registry", "europe-west4-docker.pkg.dev/p/catsdogs"]) == 0
    compiled = yaml.safe_load(path.read_text())
    env = compiled["deploymentSpec"]["executors"]["exec-importer"]["importer"]["metadata"]["containerSpec"]["env"]
    assert [e["name"] for e in env] == ["CATSDOGS_LOG_REQUESTS", "CATSDOGS_LOG_SAMPLE_RATE"]
    assert all("{{$.inputs.parameters[" in e["value"] for e in env), env
    inputs = compiled["root"]["inputDefinitions"]["parameters"]
    assert inputs["log_requests"]["defaultValue"] == "" and inputs["log_sample_rate"]["defaultValue"] == 1.0


# --- the writer beneath: rotation by count and by age ---

def _predictions(n: int):
    import numpy as np

    from components.serve.model import Predictions

    probabilities = np.linspace(0, 1, 2 * n, dtype=np.float32).reshape(n, 2)
    return Predictions(["cats", "dogs"], ["dogs"] * n, probabilities)


def test_files_rotate_every_n_records_and_each_is_written_whole(tmp_path):
    from components.serve.request_log import RequestLog

    log = RequestLog(str(tmp_path), rotate_records=3, rotate_seconds=3600)
    log.add(4, _predictions(7))
    stats = log.close()
    names = sorted(os.listdir(tmp_path))
    assert [len((tmp_path / n).read_text().splitlines()) for n in names] == [3, 3, 1]
    assert all(n.startswith(REQUEST_LOG_PREFIX) and n.endswith(f"-{os.getpid()}-{i:05d}.jsonl")
               for i, n in enumerate(names))
    assert (stats["written"], stats["files"], stats["dropped"]) == (7, 3, 0)
    assert json.loads((tmp_path / names[0]).read_text().splitlines()[0])["version"] == "4"


def test_a_file_is_written_when_it_is_old_enough_without_more_records(tmp_path):
    import time

    from components.serve.request_log import RequestLog

    log = RequestLog(str(tmp_path), rotate_records=1000, rotate_seconds=0.01)
    log.add(1, _predictions(2))
    deadline = time.monotonic() + WAIT_S  # a hang guard, not a speed check
    while not os.listdir(tmp_path):
        assert time.monotonic() < deadline, "the writer never wrote the aged file"
        time.sleep(0.01)
    assert log.close()["files"] == 1
