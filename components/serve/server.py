"""HTTP prediction server for the exported SavedModel.

It follows Vertex AI's custom-container contract (AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE,
AIP_STORAGE_URI) so the same server runs on a laptop and behind a Vertex endpoint:

    GET  /health    -> {"status": "ok", "model": NAME, "version": N}
    POST /predict   {"instances": [{"b64": "<base64 JPEG>"}, ...]}
                    -> {"predictions": [{"label": "cats", "probabilities": {"cats": 0.9, "dogs": 0.1}}, ...],
                        "model": NAME, "version": N}

MODEL_BASE is either a SavedModel folder or a TF Serving base folder of numbered versions (the newest is
served).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from components import storage
from components.deploy.core import versions
from components.errors import InputError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_INSTANCES = 64


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class LoadedModel:
    name: str
    version: int
    path: str
    signature: object

    @classmethod
    def load(cls, model_base: str) -> "LoadedModel":
        import tensorflow as tf

        model_base = model_base.rstrip("/")
        name = model_base.rsplit("/", 1)[-1]
        if storage.exists(storage.join(model_base, "saved_model.pb")):
            version, path = 1, model_base
        else:
            published = versions(model_base) if storage.exists(model_base) else []
            if not published:
                raise InputError(f"{model_base} holds no saved_model.pb and no numbered versions <base>/N/")
            version, path = published[-1], storage.join(model_base, str(published[-1]))
        log.info("loading %s version %d from %s", name, version, path)
        signature = tf.saved_model.load(path).signatures["serving_default"]
        return cls(name, version, path, signature)

    def predict(self, images: list[bytes]) -> list[dict]:
        import tensorflow as tf

        try:
            outputs = self.signature(image_bytes=tf.constant(images))
        except tf.errors.InvalidArgumentError as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"an instance is not a decodable image: {e.message}") from e
        classes = [c.decode() for c in outputs["classes"].numpy()[0]] if images else []
        return [
            {"label": label.decode(), "probabilities": {c: float(p) for c, p in zip(classes, probabilities)}}
            for label, probabilities in zip(outputs["labels"].numpy(), outputs["probabilities"].numpy())
        ]


def parse_instances(body: bytes) -> list[bytes]:
    """The encoded images of a {"instances": [{"b64": ...} | {"image_bytes": {"b64": ...}}, ...]} request."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {e}") from e
    if not isinstance(request, dict) or "instances" not in request:
        raise RequestError(HTTPStatus.BAD_REQUEST, 'expected a JSON object with "instances": [...]')
    instances = request["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError(HTTPStatus.BAD_REQUEST, '"instances" must be a non-empty list')
    if len(instances) > MAX_INSTANCES:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{len(instances)} instances, at most {MAX_INSTANCES} per request")
    images = []
    for i, instance in enumerate(instances):
        if isinstance(instance, dict) and isinstance(instance.get("image_bytes"), dict):
            instance = instance["image_bytes"]
        if not isinstance(instance, dict) or not isinstance(instance.get("b64"), str):
            raise RequestError(HTTPStatus.BAD_REQUEST, f'instance {i}: expected {{"b64": "<base64 image>"}}')
        try:
            images.append(base64.b64decode(instance["b64"], validate=True))
        except (binascii.Error, ValueError) as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"instance {i}: bad base64: {e}") from e
    return images


class PredictionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: LoadedModel, health_route: str, predict_route: str):
        super().__init__(address, PredictionHandler)
        self.model = model
        self.health_route = health_route
        self.predict_route = predict_route

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class PredictionHandler(BaseHTTPRequestHandler):
    server: PredictionServer

    def _reply(self, status: HTTPStatus, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != self.server.health_route:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}"})
            return
        model = self.server.model
        self._reply(HTTPStatus.OK, {"status": "ok", "model": model.name, "version": model.version})

    def do_POST(self) -> None:  # noqa: N802
        try:
            if self.path != self.server.predict_route:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route POST {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
            model = self.server.model
            predictions = model.predict(parse_instances(self.rfile.read(length)))
            self._reply(HTTPStatus.OK, {"predictions": predictions, "model": model.name, "version": model.version})
        except RequestError as e:
            self.close_connection = True
            self._reply(e.status, {"error": str(e)})
        except Exception:  # noqa: BLE001 - a server bug must answer 500, not drop the connection
            log.exception("prediction failed")
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error, see the server log"})

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


def make_server(model_base: str | None = None, host: str = "127.0.0.1", port: int | None = None) -> PredictionServer:
    """A server (not yet serving) for model_base, with Vertex's AIP_* variables filling what is not given."""
    model_base = model_base or os.environ.get("AIP_STORAGE_URI")
    if not model_base:
        raise InputError("no model: pass MODEL_BASE or set AIP_STORAGE_URI")
    port = int(os.environ.get("AIP_HTTP_PORT", 8080)) if port is None else port
    model = LoadedModel.load(model_base)
    return PredictionServer(
        (host, port), model,
        health_route=os.environ.get("AIP_HEALTH_ROUTE", "/health"),
        predict_route=os.environ.get("AIP_PREDICT_ROUTE", "/predict"),
    )


def serve_in_background(server: PredictionServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="prediction-server", daemon=True)
    thread.start()
    return thread
