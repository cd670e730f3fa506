import base64
import json
import os
import urllib.error
import urllib.request

import pytest

from components.deploy.core import publish_version, versions
from components.errors import InputError
from components.serve.client import predict_files, predict_url
from components.serve.server import MAX_INSTANCES, make_server, serve_in_background
from pipelines.cli import main


@pytest.fixture(scope="module")
def model_base(trained_model, tmp_path_factory) -> str:
    base = str(tmp_path_factory.mktemp("models") / "catsdogs")
    assert publish_version(trained_model, base) == 1
    return base


@pytest.fixture(scope="module")
def server(model_base):
    server = make_server(model_base, "127.0.0.1", 0)
    serve_in_background(server)
    yield server
    server.shutdown()
    server.server_close()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _b64(path: str) -> str:
    return base64.b64encode(open(path, "rb").read()).decode()


def test_publish_adds_numbered_versions(trained_model, tmp_path):
    base = str(tmp_path / "m")
    assert [publish_version(trained_model, base) for _ in range(3)] == [1, 2, 3]
    assert versions(base) == [1, 2, 3]
    assert os.path.isfile(os.path.join(base, "3", "saved_model.pb"))
    assert not [n for n in os.listdir(base) if n.startswith(".")]  # no staging leftovers


def test_publishing_a_folder_without_a_saved_model_fails(tmp_path):
    with pytest.raises(InputError, match="no saved_model.pb"):
        publish_version(str(tmp_path), str(tmp_path / "base"))


def test_health_names_model_and_version(server):
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok", "model": "catsdogs", "version": 1}


def test_predict_returns_a_label_and_probabilities_per_instance(server, sample_images):
    cat = os.path.join(sample_images, "cats", "cats.00000.jpg")
    body = {"instances": [{"b64": _b64(cat)}, {"image_bytes": {"b64": _b64(cat)}}]}
    status, reply = _post(server.url + "/predict", json.dumps(body).encode())
    assert status == 200
    assert reply["model"] == "catsdogs" and reply["version"] == 1
    first, second = reply["predictions"]
    assert first == second
    assert set(first["probabilities"]) == {"cats", "dogs"}
    assert first["label"] == max(first["probabilities"], key=first["probabilities"].get)
    assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"inputs": []}', 400, "instances"),
        (b'{"instances": []}', 400, "non-empty"),
        (b'{"instances": [{"b64": "***"}]}', 400, "bad base64"),
        (b'{"instances": [{"url": "x"}]}', 400, "instance 0"),
        (json.dumps({"instances": [{"b64": base64.b64encode(b"plain text").decode()}]}).encode(), 400, "decodable"),
        (json.dumps({"instances": [{"b64": "AA=="}] * (MAX_INSTANCES + 1)}).encode(), 400, "at most"),
    ],
    ids=["malformed", "no-instances", "empty", "base64", "wrong-shape", "not-an-image", "too-many"],
)
def test_bad_requests_get_4xx_with_a_reason_and_the_server_keeps_serving(server, body, status, message, sample_images):
    code, reply = _post(server.url + "/predict", body)
    assert code == status and message in reply["error"]
    cat = os.path.join(sample_images, "cats", "cats.00000.jpg")
    assert len(predict_files([cat], server.url)) == 1


def test_unknown_routes_are_404(server):
    code, reply = _post(server.url + "/nope", b"{}")
    assert code == 404 and "no route" in reply["error"]


def test_predict_cli_prints_label_and_probability_per_image(server, sample_images, capsys):
    paths = [os.path.join(sample_images, label, f"{label}.00002.jpg") for label in ("cats", "dogs")]
    assert main(["predict", *paths, "--endpoint", server.url, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == paths
    assert all(line["label"] in ("cats", "dogs") for line in lines)


def test_predict_cli_errors_are_clear(server, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "no.jpg"), "--endpoint", server.url]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(InputError, match="http"):
        predict_url("localhost:8080")


def test_server_reads_the_vertex_environment(model_base, trained_model, monkeypatch):
    monkeypatch.setenv("AIP_STORAGE_URI", trained_model)
    monkeypatch.setenv("AIP_HTTP_PORT", "0")
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "/v1/health")
    monkeypatch.setenv("AIP_PREDICT_ROUTE", "/v1/predict")
    server = make_server()
    serve_in_background(server)
    try:
        with urllib.request.urlopen(server.url + "/v1/health", timeout=10) as response:
            assert json.loads(response.read())["version"] == 1
        assert server.predict_route == "/v1/predict"
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
