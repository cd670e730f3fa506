"""Client for the prediction server: send image files, get (label, probability) back."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from urllib.parse import urlparse

from components import storage
from components.errors import InputError


def predict_url(endpoint: str) -> str:
    """http://host:port -> http://host:port/predict; a URL that already has a path is used as it is."""
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"--endpoint must be an http(s) URL like http://127.0.0.1:8080, got {endpoint!r}")
    return endpoint if parsed.path not in ("", "/") else endpoint.rstrip("/") + "/predict"


def predict_files(paths: list[str], endpoint: str, timeout: float = 60) -> list[dict]:
    """The server's predictions for the image files, in order."""
    missing = [p for p in paths if not storage.exists(p)]
    if missing:
        raise InputError(f"image file(s) not found: {', '.join(missing)}")
    instances = [{"b64": base64.b64encode(storage.read_bytes(p)).decode()} for p in paths]
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


def format_prediction(path: str, prediction: dict) -> str:
    label = prediction["label"]
    return f"{path}: {label} ({prediction['probabilities'][label]:.3f})"
