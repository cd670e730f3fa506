"""Local deployment and the prediction server, through real HTTP against a started server."""

import base64
import http.client
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.errors import InputError
from components.model_store import publish_version, versions
from components.serve.batching import MicroBatcher
from components.serve.client import predict_files, predict_url
from components.serve.model import LoadedModel
from components.serve.server import MAX_BODY_BYTES, MAX_INSTANCES, make_server, serve_in_background
from pipelines.cli import main

WAIT_S = 120  # upper bound for a background change to show; a hang guard, never a speed check


@pytest.fixture(scope="module")
def server(model_base):
    server = make_server(model_base, "127.0.0.1", 0)
    serve_in_background(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def saved_model(trained_model):
    """The SavedModel loaded directly: the oracle the server's answers are compared with."""
    return tf.saved_model.load(trained_model)


@pytest.fixture(scope="module")
def cat(sample_images) -> str:
    return os.path.join(sample_images, "cats", "cats.00000.jpg")


def _b64(path: str) -> str:
    return base64.b64encode(open(path, "rb").read()).decode()


def _pixels(path: str) -> list:
    """The seed project's request form: the decoded image as a nested HxWx3 list."""
    return np.asarray(Image.open(path).convert("RGB")).tolist()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _probabilities(prediction: dict) -> list[float]:
    return [prediction["probabilities"][c] for c in ("cats", "dogs")]


def test_publish_adds_numbered_versions(trained_model, tmp_path):
    base = str(tmp_path / "m")
    assert [publish_version(trained_model, base) for _ in range(3)] == [1, 2, 3]
    assert versions(base) == [1, 2, 3]
    assert os.path.isfile(os.path.join(base, "3", "saved_model.pb"))
    assert not [n for n in os.listdir(base) if n.startswith(".")]  # no staging leftovers


def test_publishing_passes_a_partial_version_folder_and_leaves_it_alone(trained_model, tmp_path):
    base = tmp_path / "m"
    assert publish_version(trained_model, str(base)) == 1
    (base / "2" / "variables").mkdir(parents=True)  # a killed copy: files, but no saved_model.pb
    (base / "2" / "variables" / "variables.index").write_bytes(b"half")
    assert publish_version(trained_model, str(base)) == 3
    assert versions(str(base)) == [1, 3]
    assert sorted(p.name for p in (base / "2").rglob("*")) == ["variables", "variables.index"]


def test_publishing_a_folder_without_a_saved_model_fails(tmp_path):
    with pytest.raises(InputError, match="no saved_model.pb"):
        publish_version(str(tmp_path), str(tmp_path / "base"))


def test_health_names_model_and_version(server):
    assert _get(server.url + "/health") == (200, {"status": "ok", "model": "catsdogs", "version": 1})


def test_image_instances_get_the_saved_models_own_predictions(server, saved_model, cat):
    body = {"instances": [{"b64": _b64(cat)}, {"image_bytes": {"b64": _b64(cat)}}]}
    status, reply = _post(server.url + "/predict", json.dumps(body).encode())
    assert status == 200 and (reply["model"], reply["version"]) == ("catsdogs", 1)
    expected = saved_model.signatures["serving_default"](image_bytes=tf.constant([open(cat, "rb").read()]))
    for prediction in reply["predictions"]:
        assert _probabilities(prediction) == pytest.approx(expected["probabilities"].numpy()[0].tolist(), abs=1e-5)
        assert prediction["label"] == expected["labels"].numpy()[0].decode()


@pytest.mark.parametrize("size", [None, (150, 150), (23, 41)], ids=["as-decoded", "150x150", "23x41"])
def test_pixel_array_instances_of_any_size_match_predict_pixels(server, saved_model, cat, size):
    image = Image.open(cat).convert("RGB")
    pixels = np.asarray(image if size is None else image.resize(size), dtype=np.float32)
    for instance in (pixels.tolist(), {"pixels": pixels.tolist()}):
        status, reply = _post(server.url + "/predict", json.dumps({"instances": [instance]}).encode())
        assert status == 200, reply
        expected = saved_model.signatures["predict_pixels"](pixels=tf.constant(pixels[np.newaxis]))
        assert _probabilities(reply["predictions"][0]) == pytest.approx(
            expected["probabilities"].numpy()[0].tolist(), abs=1e-4)


@pytest.mark.parametrize("inputs", ["list", "image_bytes", "pixels"])
def test_tf_serving_columnar_inputs_get_columnar_outputs(server, cat, inputs):
    row_status, row = _post(server.url + "/predict", json.dumps({"instances": [{"b64": _b64(cat)}]}).encode())
    body = {"list": [{"b64": _b64(cat)}], "image_bytes": {"image_bytes": [{"b64": _b64(cat)}]},
            "pixels": {"pixels": [_pixels(cat)]}}[inputs]
    status, reply = _post(server.url + "/v1/models/catsdogs:predict", json.dumps({"inputs": body}).encode())
    assert status == row_status == 200
    assert reply["outputs"]["label"] == [row["predictions"][0]["label"]]
    assert set(reply["outputs"]["probabilities"][0]) == {"cats", "dogs"}


def test_tf_serving_routes_name_the_model_and_its_version(server, cat):
    assert _get(server.url + "/v1/models/catsdogs") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    assert _get(server.url + "/v1/models/catsdogs/versions/1")[0] == 200
    body = json.dumps({"instances": [{"b64": _b64(cat)}], "signature_name": "serving_default"}).encode()
    request = urllib.request.Request(server.url + "/v1/models/catsdogs/versions/1:predict", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert (response.headers["X-Model-Name"], response.headers["X-Model-Version"]) == ("catsdogs", "1")
        assert len(json.loads(response.read())["predictions"]) == 1
    code, reply = _post(server.url + "/v1/models/catsdogs/versions/7:predict", body)
    assert code == 404 and "version 7 of catsdogs is not served; version 1 is" in reply["error"]
    code, reply = _post(server.url + "/v1/models/other:predict", body)
    assert code == 404 and "no model 'other'" in reply["error"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG with a header declaring width x height and no pixel data (a decompression bomb looks like this)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")


def _jpeg_b64() -> str:
    out = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(out, "JPEG")
    return base64.b64encode(out.getvalue()).decode()


def _instances(*instances) -> bytes:
    return json.dumps({"instances": list(instances)}).encode()


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        (b'["a list"]', '"instances"'),
        (b'{"instance": []}', '"instances"'),
        (b'{"instances": []}', '"instances" must be a non-empty list'),
        (b'{"inputs": []}', '"inputs" must be a non-empty list'),
        (b'{"inputs": {"jpeg": []}}', "unknown input 'jpeg'"),
        (b'{"instances": [{"b64": "AA=="}], "signature_name": "classify"}', "unknown signature_name"),
        (b'{"instances": [{"b64": "***"}]}', "instance 0: bad base64"),
        (b'{"instances": [{"b64": 12}]}', '"b64" must be a base64 string'),
        (b'{"instances": [{"url": "x"}]}', "instance 0: expected"),
        (_instances({"b64": _jpeg_b64()}, {"b64": base64.b64encode(b"plain text").decode()}),
         "instance 1: not an image"),
        (_instances({"b64": base64.b64encode(_png_header(7_000, 7_000)).decode()}), "over the 40000000-pixel"),
        (_instances({"b64": base64.b64encode(_png_header(99_999, 99_999)).decode()}), "over the 40000000-pixel"),
        (_instances({"b64": base64.b64encode(_png_header(8, 8)).decode()}), "cannot decode the image"),
        (_instances([[1, 2]]), "pixel array has shape [1, 2], expected [H, W, 3]"),
        (_instances([[[1, 2, 3]], [[1, 2]]]), "rectangular HxWx3 array"),
        (_instances([[["a", "b", "c"]]]), "rectangular HxWx3 array"),
        (b'{"instances": [[[[NaN, 0, 0]]]]}', "finite"),
        (_instances(*[{"b64": "AA=="}] * (MAX_INSTANCES + 1)), f"at most {MAX_INSTANCES}"),
    ],
    ids=["malformed", "not-an-object", "no-instances", "empty", "empty-inputs", "unknown-input", "signature",
         "base64", "b64-not-a-string", "wrong-instance", "not-an-image", "too-many-pixels", "bomb", "truncated-image",
         "wrong-shape", "ragged", "not-numbers", "nan", "too-many-instances"],
)
def test_bad_requests_get_400_with_a_reason_and_the_server_keeps_serving(server, body, message, cat):
    code, reply = _post(server.url + "/predict", body)
    assert code == 400 and message in reply["error"], reply
    assert len(predict_files([cat], server.url)) == 1


def _raw_post(server, headers: dict[str, str]) -> tuple[int, dict]:
    """A POST that sends only headers (no body), so a too-large Content-Length costs nothing to send."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:
        connection.putrequest("POST", "/predict")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_body_over_the_limit_is_413_and_a_missing_length_411(server, cat):
    code, reply = _raw_post(server, {"Content-Length": str(MAX_BODY_BYTES + 1)})
    assert code == 413 and "over the" in reply["error"]
    code, reply = _raw_post(server, {"Transfer-Encoding": "chunked"})
    assert code == 411 and "Content-Length" in reply["error"]
    assert len(predict_files([cat], server.url)) == 1


def test_unknown_routes_are_404(server):
    code, reply = _post(server.url + "/nope", b"{}")
    assert code == 404 and "no route POST /nope" in reply["error"]
    assert _get(server.url + "/predict")[0] == 404


def test_the_batcher_runs_queued_requests_in_one_call_and_gives_each_its_rows(trained_model, sample_images):
    model = LoadedModel("catsdogs", 1, trained_model)
    images = [os.path.join(sample_images, label, f"{label}.0000{i}.jpg")
              for label in ("cats", "dogs") for i in range(3)]
    pixels = [np.stack([model.instance_pixels({"b64": _b64(p)}, 0)] * (i % 2 + 1)) for i, p in enumerate(images)]
    batcher = MicroBatcher(max_batch=32)
    results = [None] * len(images)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.predict(model, pixels[i])))
               for i in range(len(images))]
    for thread in threads:
        thread.start()
    # every request waits in the queue before the batcher starts (what only the batcher's own queue can tell)
    while batcher._queue.qsize() < len(images):  # noqa: SLF001
        time.sleep(0.01)
    batcher.start()
    for thread in threads:
        thread.join(WAIT_S)
    batcher.close()
    assert (batcher.calls, batcher.instances) == (1, sum(len(p) for p in pixels))
    for i, result in enumerate(results):
        alone = model.predict(pixels[i])
        assert result.labels == alone.labels
        np.testing.assert_allclose(result.probabilities, alone.probabilities, atol=1e-5)


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_new_versions_swap_in_and_removing_the_newest_rolls_back_without_a_failed_request(trained_model, tmp_path, cat):
    base = str(tmp_path / "catsdogs")
    publish_version(trained_model, base)
    server = make_server(base, "127.0.0.1", 0, poll_seconds=0.05)
    serve_in_background(server)
    seen, failures, stop = [], [], threading.Event()
    body = json.dumps({"instances": [{"b64": _b64(cat)}]}).encode()

    def client_loop():
        while not stop.is_set():
            try:
                status, reply = _post(server.url + "/predict", body)
                seen.append(reply["version"]) if status == 200 else failures.append(reply)
            except Exception as e:  # noqa: BLE001 - any failure counts
                failures.append(repr(e))

    clients = [threading.Thread(target=client_loop) for _ in range(3)]
    try:
        for client in clients:
            client.start()
        _wait_for(lambda: len(seen) >= 5, "the first answers")
        publish_version(trained_model, base)
        _wait_for(lambda: seen[-1] == 2, "version 2 to be served")
        os.makedirs(os.path.join(base, "3"))  # a broken newer version: loading it fails, version 2 stays
        open(os.path.join(base, "3", "saved_model.pb"), "wb").write(b"not a SavedModel")
        time.sleep(0.5)
        assert server.model.version == 2
        shutil.rmtree(os.path.join(base, "3"))
        shutil.rmtree(os.path.join(base, "2"))
        _wait_for(lambda: seen[-1] == 1, "the rollback to version 1")
        count = len(seen)
        _wait_for(lambda: len(seen) >= count + 5, "more answers after the rollback")
    finally:
        stop.set()
        for client in clients:
            client.join(WAIT_S)
        server.shutdown()
        server.server_close()
    assert failures == []
    assert seen[0] == 1 and 2 in seen and seen[-1] == 1


def test_predict_cli_prints_label_and_probability_per_image(server, sample_images, capsys):
    paths = [os.path.join(sample_images, label, f"{label}.00002.jpg") for label in ("cats", "dogs")]
    assert main(["predict", *paths, "--endpoint", server.url, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == paths
    assert all(line["label"] in ("cats", "dogs") for line in lines)
    assert main(["predict", *paths, "--endpoint", server.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in out] == paths and all("(0." in line or "(1." in line for line in out)


def test_predict_cli_errors_are_clear(server, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "no.jpg"), "--endpoint", server.url]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(InputError, match="http"):
        predict_url("localhost:8080")


def test_server_reads_the_vertex_environment(trained_model, monkeypatch, cat):
    monkeypatch.setenv("AIP_STORAGE_URI", trained_model)
    monkeypatch.setenv("AIP_HTTP_PORT", "0")
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "/v1/health")
    monkeypatch.setenv("AIP_PREDICT_ROUTE", "/v1/endpoints/123/deployedModels/456:predict")
    server = make_server()
    serve_in_background(server)
    try:
        assert _get(server.url + "/v1/health")[1]["version"] == 1
        assert len(predict_files([cat], server.url + "/v1/endpoints/123/deployedModels/456:predict")) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_server_serves_the_newest_version(trained_model, tmp_path):
    base = str(tmp_path / "catsdogs")
    publish_version(trained_model, base)
    publish_version(trained_model, base)
    server = make_server(base, "127.0.0.1", 0)
    server.server_close()
    assert server.model.version == 2


def test_serving_an_empty_base_says_what_is_missing(tmp_path):
    with pytest.raises(InputError, match="no saved_model.pb and no numbered versions"):
        make_server(str(tmp_path), "127.0.0.1", 0)


def test_serve_command_serves_until_sigterm(model_base):
    """The container's entry point: `catsdogs serve`, stopped the way Vertex and podman stop it."""
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", model_base, "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "serving catsdogs version 1 at http://127.0.0.1:" in line
        url = line.split(" at ", 1)[1].split()[0]
        assert _get(url + "/v1/models/catsdogs")[0] == 200
        process.terminate()
        assert process.wait(WAIT_S) == 0
    finally:
        process.kill()
        process.wait()


def test_the_server_imports_without_the_pipeline_only_packages():
    """The serving image installs TensorFlow, Pillow and google-cloud-storage only (images/serving/requirements.txt)."""
    import subprocess
    import sys

    blocked = ["pandas", "apache_beam", "kfp", "wandb", "google_cloud_pipeline_components", "google.cloud.aiplatform"]
    script = f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\nimport pipelines.cli, components.serve.server"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
