"""Client for the prediction server, local or on a Vertex AI endpoint: send image files, get predictions back.

--endpoint is either the server's URL (http://host:port, or a full predict URL) or a Vertex AI endpoint's
resource name, projects/P/locations/L/endpoints/E, which goes through the aiplatform SDK's PredictionService.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from urllib.parse import urlparse

from components import storage
from components.errors import InputError

VERTEX_ENDPOINT = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/endpoints/(?P<id>[^/]+)")


def predict_url(endpoint: str) -> str:
    """http://host:port -> http://host:port/predict; a URL that already has a path is used as it is."""
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError("--endpoint must be an http(s) URL like http://127.0.0.1:8080 or a Vertex AI endpoint "
                         f"projects/P/locations/L/endpoints/E, got {endpoint!r}")
    return endpoint if parsed.path not in ("", "/") else endpoint.rstrip("/") + "/predict"


def image_instances(paths: list[str]) -> list[dict]:
    missing = [p for p in paths if not storage.exists(p)]
    if missing:
        raise InputError(f"image file(s) not found: {', '.join(missing)}")
    return [{"b64": base64.b64encode(storage.read_bytes(p)).decode()} for p in paths]


def vertex_predict_request(endpoint: str, instances: list[dict]):
    """The aiplatform SDK's PredictRequest for a Vertex endpoint resource name."""
    from google.cloud import aiplatform_v1

    request = aiplatform_v1.PredictRequest(endpoint=endpoint)
    request.instances.extend(instances)  # the dicts become protobuf Values (the constructor refuses them)
    return request


def prediction_request(paths: list[str], endpoint: str) -> dict:
    """What `predict` would send, for --dry-run: the URL and JSON body, or Vertex's API endpoint and request."""
    instances = image_instances(paths)
    vertex = VERTEX_ENDPOINT.fullmatch(endpoint)
    if vertex is None:
        return {"url": predict_url(endpoint), "body": {"instances": instances}}
    from google.protobuf import json_format

    from components.deploy.vertex import api_endpoint

    request = vertex_predict_request(endpoint, instances)
    return {"api_endpoint": api_endpoint(vertex["location"]),
            "method": "PredictionService.Predict", "request": json_format.MessageToDict(type(request).pb(request))}


def predict_files(paths: list[str], endpoint: str, timeout: float = 60) -> list[dict]:
    """The predictions for the image files, in order, from a server URL or a Vertex endpoint."""
    instances = image_instances(paths)
    vertex = VERTEX_ENDPOINT.fullmatch(endpoint)
    if vertex is not None:
        return _predict_vertex(endpoint, vertex["location"], instances, timeout)
    request = urllib.request.Request(
        predict_url(endpoint), data=json.dumps({"instances": instances}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as e:
        raise InputError(f"{endpoint} answered {e.code}: {e.read().decode(errors='replace')}") from e
    except urllib.error.URLError as e:
        raise InputError(f"cannot reach {endpoint}: {e.reason}") from e


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
