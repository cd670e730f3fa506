"""The prediction server's hard edges, through real HTTP (raw sockets where the framing is the point): draining
on SIGTERM, the decoded-pixel budget, rollback to a loadable version, non-finite outputs, client-fault inputs,
one-line CLI errors, and the client's request size limits."""

import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
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
from PIL import Image

from components.errors import InputError
from components.model_store import publish_version, versions
from components.serve.server import make_server, serve_in_background
from pipelines.cli import main

WAIT_S = 120  # upper bound for a background change to show; a hang guard, never a speed check
VERTEX_ENDPOINT = "projects/p/locations/europe-west4/endpoints/123"


@pytest.fixture(scope="module")
def server(model_base):
    server = make_server(model_base, "127.0.0.1", 0, poll_seconds=0)
    serve_in_background(server)
    yield server
    server.shutdown()
    server.server_close()


def _jpeg(size=(40, 30), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


def _body(*images: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}).encode()


def _post(url: str, body: bytes) -> tuple[int, dict, object]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def _strict_json(data: bytes):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(data, parse_constant=refuse)


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


class RawResponse:
    def __init__(self, reader, method: str):
        self.status = int(reader.readline().split()[1])
        self.headers = {}
        while (line := reader.readline().strip()):
            name, _, value = line.decode().partition(":")
            self.headers[name.strip().lower()] = value.strip()
        length = 0 if method == "HEAD" else int(self.headers.get("content-length", 0))
        self.body = reader.read(length)

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def _raw(server, data: bytes, responses: int = 1, method: str = "GET") -> list[RawResponse]:
    """Sends raw bytes on one connection and reads `responses` responses (Content-Length framed) from it."""
    sock = socket.create_connection(server.server_address[:2], timeout=WAIT_S)
    try:
        sock.sendall(data)
        reader = sock.makefile("rb")
        return [RawResponse(reader, method) for _ in range(responses)]
    finally:
        sock.close()


# --- SIGTERM: stop accepting, answer what is in flight, exit 0 ---

def test_sigterm_answers_every_request_in_flight_then_exits_0(model_base):
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", model_base, "--port", "0",
                                "--poll-seconds", "0"], stdout=subprocess.PIPE, text=True)
    connections = []
    try:
        line = process.stdout.readline()
        assert "serving catsdogs version 1 at http://127.0.0.1:" in line
        host, port = line.split(" at http://", 1)[1].split()[0].rsplit(":", 1)
        body = _body(_jpeg())
        head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        for _ in range(3):
            connection = socket.create_connection((host, int(port)), timeout=WAIT_S)
            connection.sendall(head + body)  # a whole request first: the connection is surely accepted
            response = http.client.HTTPResponse(connection)
            response.begin()
            assert response.status == 200
            response.read()
            connection.sendall(head + body[: len(body) // 2])  # then one that is half sent: in flight
            connections.append(connection)
        time.sleep(1)  # slack for the server to read the headers (ordering, not a speed check)
        process.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection((host, int(port)), timeout=WAIT_S).close()
                return False
            except ConnectionRefusedError:
                return True

        _wait_for(refused, "the server to stop accepting connections")
        assert process.poll() is None  # still there: it waits for the requests in flight
        for connection in connections:
            connection.sendall(body[len(body) // 2:])
        for connection in connections:
            response = http.client.HTTPResponse(connection)
            response.begin()
            assert response.status == 200
            assert len(_strict_json(response.read())["predictions"]) == 1
        assert process.wait(WAIT_S) == 0
    finally:
        for connection in connections:
            connection.close()
        process.kill()
        process.wait()


# --- the decoded-pixel budget ---

def _big_png(width: int, height: int) -> bytes:
    """A width x height grey PNG that compresses to a few KB: large to decode, small on the wire."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    rows = (b"\x00" + b"\x80" * (3 * width)) * 100
    data = b"".join(compressor.compress(rows) for _ in range(height // 100)) + compressor.flush()
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_heavy_requests_wait_their_turn_or_get_429_while_health_and_small_requests_answer(model_base):
    from components.serve.budget import DecodeLimits

    big = _big_png(5000, 5000)  # 25 megapixels, ~70 KB
    assert len(big) < 200_000
    limits = DecodeLimits(request_pixels=60_000_000, heavy_pixels=1_000_000, decode_pixels=60_000_000,
                          heavy_threads=1, max_waiting=1)
    server = make_server(model_base, "127.0.0.1", 0, poll_seconds=0, limits=limits)
    serve_in_background(server)
    results = {}

    def send(name: str) -> None:
        results[name] = _post(server.url + "/predict", _body(big, big))  # 50 megapixels: heavy

    try:
        status, reply, _ = _post(server.url + "/predict", _body(big, big, big))  # 75 > 60 megapixels
        assert status == 413 and "60000000-pixel limit per request" in reply["error"]
        first = threading.Thread(target=send, args=("first",))
        first.start()
        _wait_for(lambda: server.budget.decoding == 1, "the first heavy request to be decoding")
        second = threading.Thread(target=send, args=("second",))
        second.start()
        _wait_for(lambda: server.budget.waiting == 1, "the second heavy request to wait its turn")
        status, reply, headers = _post(server.url + "/predict", _body(big, big))
        assert status == 429 and "already waiting" in reply["error"] and headers["Retry-After"] == "1"
        with urllib.request.urlopen(server.url + "/health", timeout=WAIT_S) as response:
            assert response.status == 200
        status, reply, _ = _post(server.url + "/predict", _body(_jpeg()))
        assert status == 200 and len(reply["predictions"]) == 1
        # /health and the small request were answered while heavy decodes were still in flight
        assert server.budget.decoding + server.budget.waiting >= 1
        first.join(WAIT_S)
        second.join(WAIT_S)
        assert results["first"][0] == results["second"][0] == 200
        assert server.budget.in_use == server.budget.decoding == server.budget.waiting == 0
    finally:
        server.shutdown()
        server.server_close()


# --- versions: rollback to the newest loadable one, broken ones not retried, 007 is not a version ---

def test_rollback_skips_a_broken_version_which_is_retried_only_when_its_files_change(trained_model, tmp_path):
    base = str(tmp_path / "catsdogs")
    publish_version(trained_model, base)
    publish_version(trained_model, base)
    shutil.copytree(trained_model, os.path.join(base, "007"))  # not a version: never loaded
    os.makedirs(os.path.join(base, "3"))
    broken = os.path.join(base, "3", "saved_model.pb")
    open(broken, "wb").write(b"not a SavedModel")
    server = make_server(base, "127.0.0.1", 0, poll_seconds=0.02)
    serve_in_background(server)
    manager = server.versions
    try:
        assert server.model.version == 2 and manager.load_attempts[3] == 1
        polls = manager.polls
        _wait_for(lambda: manager.polls >= polls + 10, "ten polls")
        assert manager.load_attempts[3] == 1  # not retried at every poll
        shutil.rmtree(os.path.join(base, "2"))  # the served version disappears
        _wait_for(lambda: server.model.version == 1, "the rollback to version 1")
        assert manager.load_attempts[3] == 1
        with urllib.request.urlopen(server.url + "/health", timeout=WAIT_S) as response:
            assert json.loads(response.read())["version"] == 1
        # Its files change, in one step: a poll between open()'s truncation and the write would see two changes.
        replacement = tmp_path / "saved_model.pb"  # outside the version folder, whose listing is watched too
        replacement.write_bytes(b"still not a SavedModel, but other bytes")
        os.replace(replacement, broken)
        _wait_for(lambda: manager.load_attempts[3] == 2, "version 3 to be tried again")
        polls = manager.polls
        _wait_for(lambda: manager.polls >= polls + 5, "five more polls")
        assert manager.load_attempts[3] == 2 and server.model.version == 1
        assert 7 not in manager.load_attempts
    finally:
        server.shutdown()
        server.server_close()


def test_zero_padded_folders_are_not_versions(trained_model, tmp_path):
    base = str(tmp_path / "catsdogs")
    shutil.copytree(trained_model, os.path.join(base, "007"))
    shutil.copytree(trained_model, os.path.join(base, "0"))
    assert versions(base) == []
    with pytest.raises(InputError, match="no numbered versions"):
        make_server(base, "127.0.0.1", 0)
    assert publish_version(trained_model, base) == 1


# --- a model that answers NaN ---

@pytest.fixture(scope="module")
def nan_model_base(tmp_path_factory) -> str:
    """A model that answers the model store's mid-grey probe but gives NaN for bright images (the square root of
    200 - pixel): a version that answers NaN for every image is not served at all."""
    import keras

    from components.train.export import export_saved_model

    inputs = keras.Input((8, 8, 3))
    roots = keras.layers.Lambda(lambda pixels: keras.ops.sqrt(200.0 - pixels))(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(roots))
    base = str(tmp_path_factory.mktemp("nan") / "bright-nan")
    export_saved_model(keras.Model(inputs, outputs), ["cats", "dogs"], 8, os.path.join(base, "1"))
    return base


def test_non_finite_model_output_is_a_json_500_never_nan(nan_model_base):
    server = make_server(nan_model_base, "127.0.0.1", 0, poll_seconds=0)
    serve_in_background(server)
    try:
        for body in (_body(_jpeg(color=(255, 255, 255))), json.dumps({"instances": [[[[255, 255, 0]]]]}).encode()):
            request = urllib.request.Request(server.url + "/predict", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as raised:
                urllib.request.urlopen(request, timeout=WAIT_S)
            assert raised.value.code == 500
            assert raised.value.headers["Content-Type"] == "application/json"
            assert "non-finite output" in _strict_json(raised.value.read())["error"]
        with urllib.request.urlopen(server.url + "/health", timeout=WAIT_S) as response:
            assert response.status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_a_version_answering_nan_is_not_served(trained_model, diverged_model, tmp_path, caplog):
    base = str(tmp_path / "catsdogs")
    publish_version(trained_model, base)
    publish_version(diverged_model, base)
    server = make_server(base, "127.0.0.1", 0, poll_seconds=0)
    try:
        assert server.model.version == 1
        assert [r.getMessage() for r in caplog.records if "version 2" in r.getMessage() and "NaN" in r.getMessage()]
    finally:
        server.server_close()


# --- inputs that are the client's fault: 4xx, never 500, and the connection stays in step ---

def _request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{length}{headers}\r\n".encode() + body


@pytest.mark.parametrize("body, message", [
    (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"instances": [[[[1' + b"0" * 5000 + b', 0, 0]]]]}', "not valid JSON"),
    (b'{"instances": [[[1' + b"0" * 400 + b', 0, 0]]]}', "array of numbers"),
], ids=["deep-nesting", "huge-integer", "pixel-over-float-range"])
def test_malformed_bodies_get_400(server, body, message):
    status, reply, _ = _post(server.url + "/predict", body)
    assert status == 400 and message in reply["error"], reply


@pytest.mark.parametrize("length", ["abc", "-1", "1, 2", "0x10", "1.5"])
def test_odd_content_lengths_get_400_and_the_server_keeps_serving(server, length):
    request = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n{{}}".encode()
    sock = socket.create_connection(server.server_address[:2], timeout=WAIT_S)
    try:
        sock.sendall(request)
        status_line = sock.makefile("rb").readline()
    finally:
        sock.close()
    assert status_line.split()[1] == b"400", status_line
    assert _raw(server, _request("GET", "/health"))[0].status == 200


def test_a_get_with_a_body_does_not_desync_the_connection(server):
    smuggled = _request("GET", "/smuggled")  # as the body of a GET, it must not be read as a second request
    data = _request("GET", "/health", smuggled) + _request("GET", "/v1/models/catsdogs")
    first, second = _raw(server, data, responses=2)
    assert (first.status, json.loads(first.body)["status"]) == (200, "ok")
    assert second.status == 200 and "model_version_status" in json.loads(second.body)


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "DELETE"])
def test_other_methods_get_a_json_405(server, method):
    response, = _raw(server, _request(method, "/predict"), method=method)
    assert response.status == 405
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Allow") == "GET, POST"
    if method != "HEAD":  # a HEAD response has no body, by definition
        assert method in json.loads(response.body)["error"]


# --- CLI: one line, exit 2 ---

def test_serve_on_a_busy_port_is_one_line_and_exit_2(model_base, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", model_base, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"catsdogs serve: error: cannot listen on 127.0.0.1:{port}"), err


@pytest.mark.parametrize("value", ["abc", "99999", "-1", ""])
def test_serve_with_a_bad_aip_http_port_is_one_line_and_exit_2(model_base, monkeypatch, capsys, value):
    monkeypatch.setenv("AIP_HTTP_PORT", value)
    assert main(["serve", model_base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("catsdogs serve: error: "), err
    assert "port" in err[0].lower()


# --- the client: requests over a size limit ---

def _noise_jpeg(path: str, width: int, height: int, orientation: int = 1) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif.tobytes())


def test_predict_reports_a_request_the_server_finds_too_large_as_such(server, tmp_path, monkeypatch, capsys):
    import components.serve.server

    monkeypatch.setattr(components.serve.server, "MAX_BODY_BYTES", 100_000)  # a server with a lower limit
    image = str(tmp_path / "large.jpg")
    _noise_jpeg(image, 1200, 1000)  # ~1.5 MB of JPEG, ~2 MB of request
    assert main(["predict", image, "--endpoint", server.url]) == 2
    err = capsys.readouterr().err
    assert "too large" in err and "413" in err and "cannot reach" not in err, err


@pytest.mark.parametrize("image_size, expected", [(None, (768, 1024)), (150, (150, 200))])
def test_predict_dry_run_to_vertex_downsizes_a_phone_photo_under_the_limit(tmp_path, capsys, image_size, expected):
    photo = str(tmp_path / "BIG.jpg")
    _noise_jpeg(photo, 4000, 3000, orientation=6)  # stored landscape, upright 3000x4000 (portrait)
    assert os.path.getsize(photo) > 1_500_000
    size_flag = [] if image_size is None else ["--image-size", str(image_size)]
    assert main(["predict", photo, "--endpoint", VERTEX_ENDPOINT, "--dry-run", "--json", *size_flag]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.encode()) < 1_500_000
    request = json.loads(captured.out)["request"]
    sent = Image.open(io.BytesIO(base64.b64decode(request["instances"][0]["b64"])))
    assert (sent.format, sent.size) == ("JPEG", expected)  # EXIF orientation applied before downsizing
    assert f"sent as a {expected[0]}x{expected[1]} JPEG (was 3000x4000" in captured.err


def test_a_versions_file_signature_changes_with_its_files_on_gcs_too(gcs_bucket):
    """What decides whether a version that failed to load is tried again, on a bucket (AIP_STORAGE_URI)."""
    from components import storage
    from components.serve.versions import files_signature

    version = f"{gcs_bucket}/models/catsdogs/3"
    storage.write_bytes(f"{version}/saved_model.pb", b"not a SavedModel")
    storage.write_bytes(f"{version}-old/saved_model.pb", b"a sibling, not part of version 3")
    first = files_signature(version)
    assert len(first) == 1 and first == files_signature(version)
    storage.write_bytes(f"{version}/saved_model.pb", b"not a SavedModel")  # same bytes, a new generation
    assert files_signature(version) != first
