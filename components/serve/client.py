"""Client for the prediction server, local or on a Vertex AI endpoint: send image files, get predictions back.

--endpoint is either the server's URL (http://host:port, or a full predict URL) or a Vertex AI endpoint's
resource name, projects/P/locations/L/endpoints/E, which goes through the aiplatform SDK's PredictionService.

A request is kept under its endpoint's size limit (Vertex AI online prediction: 1.5 MB; our server: 16 MiB):
when the images as they are would make it larger, the large ones are turned upright (EXIF orientation), flattened
onto white, downsized (to the model's input size when known, else to at most 1024 pixels a side) and re-encoded
as JPEG, with a note saying so. The model resizes every image to its input size anyway.
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

from components import storage
from components.errors import InputError
from components.serve.limits import MAX_BODY_BYTES, MAX_INSTANCES, VERTEX_MAX_REQUEST_BYTES

BUSY_RETRIES = 5  # a server answering 429 or 503 (busy) is asked again this many times, after its Retry-After
MAX_SIDE = 1024  # longest side of a downsized image when the model's input size is not known
JPEG_QUALITY = 90

VERTEX_ENDPOINT = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/endpoints/(?P<id>[^/]+)")


def predict_url(endpoint: str) -> str:
    """http://host:port -> http://host:port/predict; a URL that already has a path is used as it is."""
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError("--endpoint must be an http(s) URL like http://127.0.0.1:8080 or a Vertex AI endpoint "
                         f"projects/P/locations/L/endpoints/E, got {endpoint!r}")
    return endpoint if parsed.path not in ("", "/") else endpoint.rstrip("/") + "/predict"


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def _request_bytes(instances: list[dict]) -> int:
    return len(json.dumps({"instances": instances}))


def downsized_size(width: int, height: int, image_size: int | None) -> tuple[int, int]:
    """(width, height) of a downsized image: the shorter side at the model's input size (so the model still
    gets every pixel it uses), else the longer side at MAX_SIDE; never larger than the image."""
    scale = image_size / min(width, height) if image_size else MAX_SIDE / max(width, height)
    scale = min(1.0, scale, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def downsize(data: bytes, image_size: int | None) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """(JPEG bytes, original upright (w, h), new (w, h)) of an encoded image, turned upright (EXIF orientation)
    and flattened onto white first, as conversion does: the re-encoded JPEG carries no EXIF any more."""
    from PIL import Image

    from components.image_files import BadImage, open_header, upright_rgb

    try:
        image = upright_rgb(open_header(data))
    except BadImage as e:
        raise InputError(str(e)) from e
    size = downsized_size(*image.size, image_size)
    original = image.size
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), original, size


def requests(paths: list[str], limit: int = MAX_BODY_BYTES, image_size: int | None = None,
             note: Callable[[str], None] = _note, where: str = "the server") -> Iterator[list[dict]]:
    """The {"b64": ...} instances of the image files, in order, as requests of at most MAX_INSTANCES images and
    `limit` bytes each (the files of one request are read when it is made: memory does not grow with the number
    of files). An image too large for a request of its own is downsized (with a note); InputError when it is
    over the limit even then."""
    missing = [p for p in paths if not storage.exists(p)]
    if missing:
        raise InputError(f"image file(s) not found: {', '.join(missing)}")
    batch: list[dict] = []
    size = _request_bytes([])
    for path in paths:
        data = storage.read_bytes(path)
        instance = _b64(data)
        if _request_bytes([instance]) > limit:
            try:
                jpeg, original, new_size = downsize(data, image_size)
            except InputError as e:
                raise InputError(f"{path}: {e}") from e
            if len(jpeg) < len(data):
                instance = _b64(jpeg)
                note(f"{path}: sent as a {new_size[0]}x{new_size[1]} JPEG (was {original[0]}x{original[1]}, "
                     f"{len(data)} bytes) to keep the request under {where}'s {limit}-byte limit")
            if _request_bytes([instance]) > limit:
                raise InputError(f"{path} makes a request of {_request_bytes([instance])} bytes even when "
                                 f"downsized, over {where}'s {limit}-byte limit")
        added = len(json.dumps(instance)) + (2 if batch else 0)  # ", " between instances
        if batch and (len(batch) == MAX_INSTANCES or size + added > limit):
            yield batch
            batch, size, added = [], _request_bytes([]), added - 2
        batch.append(instance)
        size += added
    if batch:
        yield batch


def vertex_predict_request(endpoint: str, instances: list[dict]):
    """The aiplatform SDK's PredictRequest for a Vertex endpoint resource name."""
    from google.cloud import aiplatform_v1

    request = aiplatform_v1.PredictRequest(endpoint=endpoint)
    request.instances.extend(instances)  # the dicts become protobuf Values (the constructor refuses them)
    return request


def endpoint_requests(paths: list[str], endpoint: str, image_size: int | None = None) -> Iterator[list[dict]]:
    """The instances for an endpoint, as requests within its size limits."""
    if VERTEX_ENDPOINT.fullmatch(endpoint):
        return requests(paths, VERTEX_MAX_REQUEST_BYTES, image_size, where="Vertex AI online prediction")
    return requests(paths, MAX_BODY_BYTES, image_size)


def prediction_request(paths: list[str], endpoint: str, image_size: int | None = None) -> dict | list[dict]:
    """What `predict` would send, for --dry-run: the URL and JSON body, or Vertex's API endpoint and request;
    a list of them when the files take several requests."""
    vertex = VERTEX_ENDPOINT.fullmatch(endpoint)
    made = []
    for instances in endpoint_requests(paths, endpoint, image_size):
        if vertex is None:
            made.append({"url": predict_url(endpoint), "body": {"instances": instances}})
            continue
        from google.protobuf import json_format

        from components.deploy.vertex import api_endpoint

        request = vertex_predict_request(endpoint, instances)
        made.append({"api_endpoint": api_endpoint(vertex["location"]), "method": "PredictionService.Predict",
                     "request": json_format.MessageToDict(type(request).pb(request))})
    return made[0] if len(made) == 1 else made


def predict_files(paths: list[str], endpoint: str, timeout: float = 60, image_size: int | None = None) -> list[dict]:
    """The predictions for the image files, in order, from a server URL or a Vertex endpoint, in as many
    requests as its limits take."""
    vertex = VERTEX_ENDPOINT.fullmatch(endpoint)
    predictions = []
    for instances in endpoint_requests(paths, endpoint, image_size):
        if vertex is not None:
            predictions += _predict_vertex(endpoint, vertex["location"], instances, timeout)
        else:
            predictions += _predict_http(endpoint, instances, timeout)
    return predictions


def _predict_http(endpoint: str, instances: list[dict], timeout: float) -> list[dict]:
    body = json.dumps({"instances": instances}).encode()
    request = urllib.request.Request(predict_url(endpoint), data=body, headers={"Content-Type": "application/json"},
                                     method="POST")
    try:
        for attempt in range(BUSY_RETRIES + 1):
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read())["predictions"]
            except urllib.error.HTTPError as e:
                if e.code not in (429, 503) or attempt == BUSY_RETRIES:
                    raise
                e.read()
                time.sleep(_retry_after(e.headers.get("Retry-After")))  # busy: as it asks, then again
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        if e.code == 413:
            raise InputError(f"{endpoint} refused the {len(body)}-byte request as too large (413): {detail}") from e
        raise InputError(f"{endpoint} answered {e.code}: {detail}") from e
    except (urllib.error.URLError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (BrokenPipeError, ConnectionResetError)):
            # The server answered before reading the whole body and closed: what a size limit does.
            raise InputError(f"{endpoint} closed the connection while the {len(body)}-byte request was being sent: "
                             "probably too large for it (413); send fewer or smaller images") from e
        raise InputError(f"cannot reach {endpoint}: {reason}") from e


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (seconds form), 1 when absent or odd, at most 10."""
    return min(10.0, float(value)) if value and value.strip().isdigit() else 1.0


def _predict_vertex(endpoint: str, location: str, instances: list[dict], timeout: float) -> list[dict]:
    """Needs Google credentials (gcloud auth application-default login, or a service account)."""
    from google.api_core import exceptions
    from google.cloud import aiplatform_v1
    from google.protobuf import json_format

    from components.deploy.vertex import api_endpoint

    client = aiplatform_v1.PredictionServiceClient(client_options={"api_endpoint": api_endpoint(location)})
    try:
        response = client.predict(request=vertex_predict_request(endpoint, instances), timeout=timeout)
    except exceptions.GoogleAPICallError as e:
        raise InputError(f"{endpoint} answered: {e}") from e
    return [json_format.MessageToDict(p) for p in type(response).pb(response).predictions]


def format_prediction(path: str, prediction: dict) -> str:
    label = prediction["label"]
    return f"{path}: {label} ({prediction['probabilities'][label]:.3f})"
