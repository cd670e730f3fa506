"""HTTP prediction server for the exported SavedModel, the same locally and in the Vertex AI container.

Routes (NAME is the model base folder's name unless given):

    GET  /health                            {"status": "ok", "model": NAME, "version": N}
    POST /predict                           Vertex AI custom-container contract (AIP_* variables below)
    GET  /v1/models/NAME[/versions/N]       TF Serving model status
    POST /v1/models/NAME[/versions/N]:predict

    request   {"instances": [I, ...]}  or TF Serving's columnar {"inputs": [I, ...]}
              where I is {"b64": "<base64 image>"}, {"image_bytes": {"b64": ...}}, an HxWx3 array of pixels
              (any size; resized like in training) or {"pixels": <that array>}
    response  {"predictions": [{"label": "cats", "probabilities": {"cats": 0.9, "dogs": 0.1}}, ...],
               "model": NAME, "version": N}    ({"outputs": {"label": [...], "probabilities": [...]}, ...}
               for columnar requests); also the headers X-Model-Name and X-Model-Version.

Every client error is a 4xx with {"error": "<what is wrong>"}. Vertex's contract: listen on AIP_HTTP_PORT,
health on AIP_HEALTH_ROUTE, predictions on AIP_PREDICT_ROUTE, the model from AIP_STORAGE_URI (gs:// too).

The standard library's ThreadingHTTPServer gives each connection a thread: JSON parsing and image decoding run
there, in parallel, while one batcher thread runs the model on everything decoded so far (batching.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from components.errors import InputError
from components.serve.batching import MicroBatcher
from components.serve.model import LoadedModel, RequestError, bad_request
from components.serve.versions import VersionManager

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_INSTANCES = 64
MAX_BATCH = 32
POLL_SECONDS = 5.0
SIGNATURES = ("serving_default", "predict_pixels")  # the request's form picks the path; both names are fine

MODEL_ROUTE = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>:predict)?")


def parse_request(body: bytes) -> tuple[list, bool]:
    """The instances of a request body and whether it was TF Serving's columnar form ({"inputs": ...})."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"body is not valid JSON: {e}") from e
    if not isinstance(request, dict) or not ("instances" in request or "inputs" in request):
        raise bad_request('expected a JSON object with "instances": [...] (or TF Serving\'s "inputs")')
    signature = request.get("signature_name", "serving_default")
    if signature not in SIGNATURES:
        raise bad_request(f"unknown signature_name {signature!r}: this model has {', '.join(SIGNATURES)}")
    columnar = "instances" not in request
    instances = request["inputs"] if columnar else request["instances"]
    if columnar and isinstance(instances, dict) and len(instances) == 1:
        # {"inputs": {"image_bytes": [...]}} or {"inputs": {"pixels": [...]}}: the signature's input name
        (input_name, instances), = instances.items()
        if input_name not in ("image_bytes", "pixels"):
            raise bad_request(f'unknown input {input_name!r}: expected "image_bytes" or "pixels"')
        if input_name == "image_bytes" and isinstance(instances, list):
            instances = [{"image_bytes": i} for i in instances]
    key = "inputs" if columnar else "instances"
    if not isinstance(instances, list) or not instances:
        raise bad_request(f'"{key}" must be a non-empty list')
    if len(instances) > MAX_INSTANCES:
        raise bad_request(f"{len(instances)} instances, at most {MAX_INSTANCES} per request")
    return instances, columnar


class PredictionServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # connections waiting to be accepted when a burst arrives

    def __init__(self, address: tuple[str, int], versions: VersionManager, batcher: MicroBatcher,
                 health_route: str, predict_route: str):
        super().__init__(address, PredictionHandler)
        self.versions = versions
        self.batcher = batcher
        self.health_route = health_route
        self.predict_route = predict_route

    @property
    def model(self) -> LoadedModel:
        """The version being served now."""
        return self.versions.current

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def server_close(self) -> None:
        super().server_close()
        self.versions.close()
        self.batcher.close()

    def handle_error(self, request, client_address) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)  # e.g. the client hung up


class PredictionHandler(BaseHTTPRequestHandler):
    server: PredictionServer
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
    timeout = 120  # seconds an idle or slow connection may hold its thread
    disable_nagle_algorithm = True  # headers and body go out as two writes: without this, +40 ms (delayed ACK)

    def _reply(self, status: HTTPStatus, payload: dict, model: LoadedModel | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if model is not None:
            self.send_header("X-Model-Name", model.name)
            self.send_header("X-Model-Version", str(model.version))
        self.end_headers()
        self.wfile.write(body)

    def _route_model(self, path: str, verb: str) -> LoadedModel | None:
        """The model a TF Serving route names (404 for another name or a version not served), or None."""
        match = MODEL_ROUTE.fullmatch(path)
        if match is None or (match["verb"] or "") != verb:
            return None
        model = self.server.model  # taken once: a swap during the request does not change it
        if match["name"] != model.name:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no model {match['name']!r}; this server serves {model.name!r}")
        if match["version"] is not None and int(match["version"]) != model.version:
            raise RequestError(HTTPStatus.NOT_FOUND,
                               f"version {match['version']} of {model.name} is not served; version {model.version} is")
        return model

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        try:
            path = self.path.split("?", 1)[0]
            if path == self.server.health_route:
                model = self.server.model
                self._reply(HTTPStatus.OK, {"status": "ok", "model": model.name, "version": model.version}, model)
                return
            model = self._route_model(path, verb="")
            if model is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route GET {path}")
            status = {"version": str(model.version), "state": "AVAILABLE",
                      "status": {"error_code": "OK", "error_message": ""}}
            self._reply(HTTPStatus.OK, {"model_version_status": [status]}, model)
        except RequestError as e:
            self._reply(e.status, {"error": str(e)})

    def do_POST(self) -> None:  # noqa: N802
        body_read = False
        try:
            path = self.path.split("?", 1)[0]
            model = self.server.model if path == self.server.predict_route else self._route_model(path, ":predict")
            if model is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route POST {path}")
            body = self._read_body()
            body_read = True
            self._predict(model, body)
        except RequestError as e:
            self.close_connection = self.close_connection or not body_read  # an unread body would be the next request
            self._reply(e.status, {"error": str(e)})
        except Exception:  # noqa: BLE001 - a server bug must answer 500, not drop the connection
            log.exception("prediction failed")
            self.close_connection = True
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error, see the server log"})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not supported: send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length header")
        if int(length) > MAX_BODY_BYTES:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
        return self.rfile.read(int(length))

    def _predict(self, model: LoadedModel, body: bytes) -> None:
        instances, columnar = parse_request(body)
        pixels = np.stack([model.instance_pixels(instance, i) for i, instance in enumerate(instances)])
        rows = self.server.batcher.predict(model, pixels).rows()
        if columnar:
            result = {"outputs": {"label": [r["label"] for r in rows],
                                  "probabilities": [r["probabilities"] for r in rows]}}
        else:
            result = {"predictions": rows}
        self._reply(HTTPStatus.OK, {**result, "model": model.name, "version": model.version}, model)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


def make_server(model_base: str | None = None, host: str = "127.0.0.1", port: int | None = None, *,
                model_name: str | None = None, poll_seconds: float = POLL_SECONDS,
                max_batch: int = MAX_BATCH) -> PredictionServer:
    """A server (not yet serving) for model_base, with Vertex's AIP_* variables filling what is not given.

    The newest version is loaded and warmed up before this returns; a poller then follows new versions.
    """
    model_base = (model_base or os.environ.get("AIP_STORAGE_URI") or "").rstrip("/")
    if not model_base:
        raise InputError("no model: pass MODEL_BASE or set AIP_STORAGE_URI")
    if max_batch < 1:
        raise InputError(f"max_batch must be at least 1, got {max_batch}")
    port = int(os.environ.get("AIP_HTTP_PORT", 8080)) if port is None else port
    versions = VersionManager(model_base, model_name or model_base.rsplit("/", 1)[-1], max_batch, poll_seconds)
    return PredictionServer(
        (host, port), versions, MicroBatcher(max_batch).start(),
        health_route=os.environ.get("AIP_HEALTH_ROUTE", "/health"),
        predict_route=os.environ.get("AIP_PREDICT_ROUTE", "/predict"),
    )


def serve_in_background(server: PredictionServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="prediction-server", daemon=True)
    thread.start()
    return thread
