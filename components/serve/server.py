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

Every client error is a 4xx with {"error": "<what is wrong>"}; a model that answers NaN gets a 500 saying so.
Vertex's contract: listen on AIP_HTTP_PORT, health on AIP_HEALTH_ROUTE, predictions on AIP_PREDICT_ROUTE,
the model from AIP_STORAGE_URI (gs:// too).

With --log-requests (or $CATSDOGS_LOG_REQUESTS, how Vertex deployments set it) a sample of the answered images is
logged for drift monitoring by a background writer (request_log.py); /health then also reports its counters.

HTTP is uvicorn's (httptools' parser: framing, keep-alive, pipelining and malformed requests are its job) with
Starlette's request and response objects. The event loop only moves bytes: JSON parsing and image decoding run
in decode threads (in parallel: TensorFlow's decoders release the GIL), heavy requests wait for the pixel budget
(budget.py), and one model call at a time runs on everything decoded so far (batching.py). SIGTERM stops
accepting connections, answers every request already received and exits within `grace_seconds`.

Long: a quarter of it is this reference of the protocol, kept beside the routes that answer it; the rest is one
app and the server that runs it (its parts with a life of their own are budget.py, batching.py, protocol.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import numpy as np
import uvicorn
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from components.contracts import LOG_REQUESTS_ENV, LOG_SAMPLE_RATE_ENV, PROFILE_PIXELS_SIGNATURE
from components.errors import InputError
from components.serve.batching import MicroBatcher
from components.serve.budget import DecodeLimits, PixelBudget
from components.serve.limits import GRACE_SECONDS, MAX_BODY_BYTES, MAX_IN_FLIGHT, MAX_INSTANCES
from components.serve.model import Instance, LoadedModel, Predictions, RequestError, bad_request, read_instance
from components.serve.protocol import ConnectionLimits, LimitedHttpToolsProtocol, connection_limit
from components.serve.request_log import MAX_QUEUED, RequestLog, parse_sample_rate
from components.serve.versions import VersionManager

log = logging.getLogger(__name__)

MAX_BATCH = 32
POLL_SECONDS = 5.0
KEEP_ALIVE_S = 75  # idle keep-alive connections: longer than the load balancers' 60 s, so they close first
# Light requests in flight at once, each in its own thread from parsing to answer (the old server had one
# thread per connection); they mostly wait for the batcher, so this also bounds the batches it can form.
DECODE_THREADS = 64
SIGNATURES = ("serving_default", "predict_pixels")  # the request's form picks the path; both names are fine

MODEL_ROUTE = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>:predict)?")
LOGGED_PATH_CHARS = 200  # of a request's path in the log: a client's 5,000-character path is not logged whole


def _shown(text: str, limit: int = 80) -> str:
    """A client's text for an error message or the log, cut to `limit` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_request(body: bytes) -> tuple[list, bool]:
    """The instances of a request body and whether it was TF Serving's columnar form ({"inputs": ...})."""
    try:
        request = json.loads(body)
    except RecursionError as e:
        raise bad_request("body is not valid JSON: nested too deeply") from e
    except ValueError as e:  # also integers of over 4300 digits, and bodies that are not UTF-8
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



def _json(status: int, payload: dict, model: LoadedModel | None = None, headers: dict | None = None) -> Response:
    headers = dict(headers or {})
    if model is not None:
        headers["X-Model-Name"] = model.name
        headers["X-Model-Version"] = str(model.version)
    # allow_nan=False: NaN and Infinity are not JSON, whatever produced them
    return Response(json.dumps(payload, allow_nan=False), status, headers, media_type="application/json")


class PredictionApp:
    """The ASGI application: routes, request checks, decoding and the batched model call."""

    def __init__(self, versions: VersionManager, batcher: MicroBatcher, limits: DecodeLimits,
                 health_route: str, predict_route: str, max_in_flight: int = MAX_IN_FLIGHT,
                 request_log: RequestLog | None = None):
        self.versions = versions
        self.request_log = request_log
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # prediction requests being read, decoded or predicted now
        self.shed = 0  # prediction requests answered 503 because max_in_flight were in the server
        self.abandoned = 0  # prediction requests dropped unanswered because their client had hung up
        self.batcher = batcher
        self.budget = PixelBudget(limits)
        self.health_route = health_route
        self.predict_route = predict_route
        self._light = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        self._heavy = ThreadPoolExecutor(limits.heavy_threads, thread_name_prefix="decode-heavy")

    def warm(self, model: LoadedModel) -> None:
        """Sends a version its warm-up requests through this path (a decode thread, the batcher) before it is
        served: warming the model alone left the first request several times slower than the steady state, and
        one pass of this left the next pass ~2.5x slower than the one after (measured on 2 CPUs): hence two."""
        for body in model.warmup_bodies * 2:
            try:
                # not logged: the request log holds what clients sent (drift monitoring reads it)
                self._light.submit(self._light_predict, model, body, threading.Event(), False).result()
            except Exception as e:  # noqa: BLE001 - a warm-up request that fails must not stop serving
                log.warning("%r: a warm-up request failed: %s", model, e)

    def close(self) -> None:
        self._light.shutdown(wait=False, cancel_futures=True)
        self._heavy.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # no lifespan events (lifespan="off"); no websockets (ws="none": plain HTTP)
            return
        request = Request(scope, receive)
        try:
            response = await self._dispatch(request)
        except RequestError as e:
            headers = {}
            if request.method == "POST" and e.status in (HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                                         HTTPStatus.LENGTH_REQUIRED, HTTPStatus.SERVICE_UNAVAILABLE):
                headers["Connection"] = "close"  # its body is not read: do not make the client send it all
            if e.status == HTTPStatus.METHOD_NOT_ALLOWED:
                headers["Allow"] = "GET, POST"
            if e.status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE):
                headers["Retry-After"] = "1"
            response = _json(e.status, {"error": str(e)}, headers=headers)
        except ClientDisconnect:
            return  # the client hung up (before its body arrived, or before its answer was ready): nobody to answer
        except Exception:  # a server bug must answer 500, not drop the connection
            log.exception("%s %s failed", request.method, _shown(scope["path"], LOGGED_PATH_CHARS))
            response = _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error, see the server log"})
        await response(scope, receive, send)

    async def _dispatch(self, request: Request) -> Response:
        path, method = request.scope["path"], request.method
        if method == "GET":
            if path == self.health_route:
                model = self.versions.current
                health = {"status": "ok", "model": model.name, "version": model.version}
                if self.request_log is not None:
                    health["request_log"] = self.request_log.stats()
                return _json(HTTPStatus.OK, health, model)
            model = self._route_model(path, verb="")
            if model is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route GET {_shown(path)}")
            status = {"version": str(model.version), "state": "AVAILABLE",
                      "status": {"error_code": "OK", "error_message": ""}}
            return _json(HTTPStatus.OK, {"model_version_status": [status]}, model)
        if method == "POST":
            model = self.versions.current if path == self.predict_route else self._route_model(path, ":predict")
            if model is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route POST {_shown(path)}")
            if self.in_flight >= self.max_in_flight:
                self.shed += 1
                raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE,
                                   f"{self.in_flight} prediction requests are already in the server: retry later")
            self.in_flight += 1
            try:
                return await self._post(request, model)
            finally:
                self.in_flight -= 1
        raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {method} is not allowed: use GET or POST")

    def _route_model(self, path: str, verb: str) -> LoadedModel | None:
        """The model a TF Serving route names (404 for another name or a version not served), or None."""
        match = MODEL_ROUTE.fullmatch(path)
        if match is None or (match["verb"] or "") != verb:
            return None
        model = self.versions.current  # taken once: a swap during the request does not change it
        if match["name"] != model.name:
            raise RequestError(HTTPStatus.NOT_FOUND,
                               f"no model {_shown(match['name'])!r}; this server serves {model.name!r}")
        # Compared as text: int() of over 4,300 digits raises, and version folders have no leading zeros.
        if match["version"] is not None and match["version"] != str(model.version):
            raise RequestError(HTTPStatus.NOT_FOUND, f"version {_shown(match['version'])} of {model.name} is not "
                                                     f"served; version {model.version} is")
        return model

    async def _read_body(self, request: Request) -> bytes:
        if "upgrade" in request.headers.get("connection", "").lower() and "upgrade" in request.headers:
            # httptools stops at an Upgrade request's head: its body never arrives (the connection then closes)
            raise bad_request(f"Upgrade ({_shown(request.headers['upgrade'])}) is not supported here: send the "
                              "prediction request without Connection: Upgrade")
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not supported: send Content-Length")
        length = request.headers.get("content-length")
        if length is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length header")
        if not length.strip().isdigit():  # the HTTP parser refuses most of these already
            raise bad_request(f"Content-Length must be a number of bytes, got {length!r}")
        if int(length) > MAX_BODY_BYTES:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
        return await request.body()

    async def _post(self, request: Request, model: LoadedModel) -> Response:
        """The prediction, unless the client hangs up first: a watcher follows the connection while the request
        waits, decodes and predicts, and each of those steps starts only while the client is still there."""
        body = await self._read_body(request)
        gone = threading.Event()

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        await asyncio.sleep(0)  # the watcher sees a hang-up that has already happened before any work starts
        try:
            return await self._predict(model, body, gone, watcher)
        except ClientDisconnect:
            self.abandoned += 1
            raise
        finally:
            watcher.cancel()

    async def _predict(self, model: LoadedModel, body: bytes, gone: threading.Event,
                       watcher: asyncio.Future) -> Response:
        loop = asyncio.get_running_loop()
        # A light request makes one trip to a decode thread: parsed, checked, decoded, batched, answered there.
        answer, heavy = await loop.run_in_executor(self._light, self._light_predict, model, body, gone)
        if answer is None:  # heavy: wait for the budget in the event loop, then decode in a heavy thread
            columnar, items = heavy
            pixels = sum(item.area for item in items)
            waiting = asyncio.ensure_future(self.budget.acquire(pixels))
            await asyncio.wait([waiting, watcher], return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()  # the client left while waiting: its place in the queue is given up
                raise ClientDisconnect()
            waiting.result()  # 429 when the queue is full
            try:
                decoded, stats = await loop.run_in_executor(self._heavy, self._decode, model, items, gone)
            finally:
                self.budget.release(pixels)
            _still_there(gone)
            predictions = await asyncio.wrap_future(self.batcher.submit(model, decoded))
            answer = self._answer(model, columnar, predictions)
            self._log(model, predictions, stats)
        return Response(answer, HTTPStatus.OK, {"X-Model-Name": model.name, "X-Model-Version": str(model.version)},
                        media_type="application/json")

    def _light_predict(self, model: LoadedModel, body: bytes, gone: threading.Event, logged: bool = True
                       ) -> tuple[bytes | None, tuple | None]:
        """(the answer, None) for a light request; (None, (columnar, checked instances)) for a heavy one."""
        _still_there(gone)
        instances, columnar = parse_request(body)
        items = [read_instance(instance, i) for i, instance in enumerate(instances)]
        pixels = sum(item.area for item in items)
        if self.budget.check(pixels):
            return None, (columnar, items)
        with self.budget.light(pixels):
            decoded, stats = self._decode(model, items, gone)
        _still_there(gone)
        predictions = self.batcher.predict(model, decoded)
        answer = self._answer(model, columnar, predictions)
        if logged:
            self._log(model, predictions, stats)
        return answer, None

    def _log(self, model: LoadedModel, predictions: Predictions, stats: np.ndarray | None) -> None:
        """Queues the answered request's sampled images for the request log (never waits)."""
        if self.request_log is not None:
            predictions.image_stats = stats
            self.request_log.add(model.version, predictions)

    @staticmethod
    def _answer(model: LoadedModel, columnar: bool, predictions: Predictions) -> bytes:
        predictions.check_finite()
        rows = predictions.rows()
        if columnar:
            result = {"outputs": {"label": [r["label"] for r in rows],
                                  "probabilities": [r["probabilities"] for r in rows]}}
        else:
            result = {"predictions": rows}
        return json.dumps({**result, "model": model.name, "version": model.version}, allow_nan=False).encode()

    @staticmethod
    def _decode(model: LoadedModel, items: list[Instance], gone: threading.Event
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """The request's pixels [N, S, S, 3], and with a profiled version (request logging) their image
        statistics [N, 5] from the same decode."""
        decoded, stats = [], []
        for item in items:
            _still_there(gone)
            if model.profiled:
                pixels, image_stats = model.decode_with_stats(item)
                decoded.append(pixels)
                stats.append(image_stats)
            else:
                decoded.append(model.decode(item))
        return np.stack(decoded), np.stack(stats) if stats else None


def _still_there(gone: threading.Event) -> None:
    """ClientDisconnect when the request's client has hung up: nobody would read the answer."""
    if gone.is_set():
        raise ClientDisconnect()


def _port(port: int | None) -> int:
    """--port, else $AIP_HTTP_PORT, else 8080; InputError for anything that is not a port number."""
    source = "--port"
    if port is None:
        text = os.environ.get("AIP_HTTP_PORT", "8080")
        if not text.strip().isdigit():
            raise InputError(f"AIP_HTTP_PORT must be a port number (0-65535), got {text!r}")
        port, source = int(text), "AIP_HTTP_PORT"
    if not 0 <= port <= 65535:
        raise InputError(f"{source} must be 0-65535, got {port}")
    return port


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket bound now, so a busy port is reported before the model is loaded."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise InputError(f"cannot listen on {host}:{port}: unknown host ({e.strerror})") from e
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart must not wait out TIME_WAIT
        sock.bind(address)
        sock.listen(128)  # connections waiting to be accepted when a burst arrives
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror} (is another server running there?)") from e
    sock.set_inheritable(True)
    return sock


class PredictionServer:
    """uvicorn serving PredictionApp on a socket bound at construction; serve_forever() runs it in this thread."""

    def __init__(self, sock: socket.socket, app: PredictionApp, grace_seconds: float,
                 connection_limits: ConnectionLimits):
        self.socket = sock
        self.app = app
        self.server_address = sock.getsockname()
        self.connection_limits = connection_limits
        config = uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, server_header=False,
            http=functools.partial(LimitedHttpToolsProtocol, limits=connection_limits), ws="none",
            loop="uvloop", timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=grace_seconds,
        )
        self._uvicorn = uvicorn.Server(config)
        self._serving = False
        self._stopped = threading.Event()

    @property
    def versions(self) -> VersionManager:
        return self.app.versions

    @property
    def batcher(self) -> MicroBatcher:
        return self.app.batcher

    @property
    def budget(self) -> PixelBudget:
        return self.app.budget

    @property
    def model(self) -> LoadedModel:
        """The version being served now."""
        return self.app.versions.current

    @property
    def health_route(self) -> str:
        return self.app.health_route

    @property
    def predict_route(self) -> str:
        return self.app.predict_route

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serves until shutdown() or, in the main thread, SIGTERM / SIGINT (then uvicorn re-raises the signal
        after draining, for the handler that was installed before)."""
        self._serving = True
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stops accepting, answers the requests in flight (at most the grace period) and returns when done."""
        self._uvicorn.should_exit = True
        if self._serving:
            self._stopped.wait()

    def server_close(self) -> dict | None:
        """Releases everything; with request logging, writes what is queued and returns its final counters."""
        self.socket.close()
        self.app.versions.close()
        self.app.batcher.close()
        self.app.close()
        if self.app.request_log is not None:
            return self.app.request_log.close()
        return None


def make_server(model_base: str | None = None, host: str = "127.0.0.1", port: int | None = None, *,
                model_name: str | None = None, poll_seconds: float = POLL_SECONDS, max_batch: int = MAX_BATCH,
                limits: DecodeLimits | None = None, grace_seconds: float = GRACE_SECONDS,
                connection_limits: ConnectionLimits | None = None,
                max_in_flight: int = MAX_IN_FLIGHT, log_requests: str | None = None,
                log_sample_rate: float | None = None, log_buffer: int = MAX_QUEUED) -> PredictionServer:
    """A server (not yet serving) for model_base, with Vertex's AIP_* variables (and the request log's
    CATSDOGS_LOG_* ones) filling what is not given.

    The port is bound first (a busy port is an InputError), then the newest loadable version is loaded and
    warmed up before this returns; a poller then follows new versions.
    """
    model_base = (model_base or os.environ.get("AIP_STORAGE_URI") or "").rstrip("/")
    if not model_base:
        raise InputError("no model: pass MODEL_BASE or set AIP_STORAGE_URI")
    if max_batch < 1:
        raise InputError(f"--max-batch must be at least 1, got {max_batch}")
    if grace_seconds < 0:
        raise InputError(f"the grace period must be 0 or more seconds, got {grace_seconds}")
    log_requests = log_requests or os.environ.get(LOG_REQUESTS_ENV) or None
    if log_sample_rate is not None:
        log_sample_rate = parse_sample_rate(log_sample_rate)
    elif log_requests:
        log_sample_rate = parse_sample_rate(os.environ.get(LOG_SAMPLE_RATE_ENV, "1"), LOG_SAMPLE_RATE_ENV)
    if log_buffer < 1:
        raise InputError(f"--log-buffer must be at least 1 record, got {log_buffer}")
    sock = _listen(host, _port(port))
    try:
        versions = VersionManager(model_base, model_name or model_base.rsplit("/", 1)[-1], max_batch, poll_seconds,
                                  profile=bool(log_requests))
        request_log = RequestLog(log_requests, log_sample_rate, max_queued=log_buffer) if log_requests else None
    except BaseException:
        sock.close()
        raise
    if request_log is not None and not versions.current.profiled:
        log.warning("version %d has no %s signature: requests are logged without embedding and image_stats",
                    versions.current.version, PROFILE_PIXELS_SIGNATURE)
    app = PredictionApp(versions, MicroBatcher(max_batch).start(), limits or DecodeLimits(),
                        health_route=os.environ.get("AIP_HEALTH_ROUTE", "/health"),
                        predict_route=os.environ.get("AIP_PREDICT_ROUTE", "/predict"), max_in_flight=max_in_flight,
                        request_log=request_log)
    app.warm(versions.current)
    versions.before_swap = app.warm
    connection_limits = connection_limits or ConnectionLimits()
    if not connection_limits.max_connections:
        connection_limits = dataclasses.replace(connection_limits, max_connections=connection_limit())
    return PredictionServer(sock, app, grace_seconds, connection_limits)


def serve_in_background(server: PredictionServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="prediction-server", daemon=True)
    thread.start()
    return thread
