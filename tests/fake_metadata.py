"""A fake Google Compute Engine metadata server on 127.0.0.1, playing the part of the one every Google Cloud
machine has (Cloud Build's workers included): there, Application Default Credentials find a token without any
login, so a test that expects "no credentials" gets real ones and calls Google instead.

tests/conftest.py starts one for the whole session and points google-auth at it (GCE_METADATA_HOST and
GCE_METADATA_IP, read once when google.auth is imported), so the quick suite always runs as it would on Google
Cloud. Its token is fake: a request that used it would be refused by Google, and the server records every request
so that tests can assert which ones asked for a token.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FLAVOR = ("Metadata-Flavor", "Google")
TOKEN = "fake-metadata-token"


class FakeMetadataServer:
    """GET / (google-auth's ping), project id and number, the default service account, its token and the
    universe domain, answered only to requests that carry `Metadata-Flavor: Google`, as the real server does.

    `answering = False` plays a machine without one (every path 404, no Metadata-Flavor header), which
    google-auth takes for "not on Google Cloud".
    """

    def __init__(self, project: str = "metadata-project", number: str = "123456789012",
                 email: str = "catsdogs-test@metadata-project.iam.gserviceaccount.com"):
        self.project, self.number, self.email = project, number, email
        self.answering = True
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"127.0.0.1:{self._server.server_address[1]}"

    def token_requests(self) -> list[str]:
        return [path for path in self.requests if path.split("?")[0].endswith("/token")]

    def _answer(self, path: str) -> tuple[int, str, str] | None:
        account = "/computeMetadata/v1/instance/service-accounts/default"
        answers = {
            "/": ("text/plain", ""),
            "/computeMetadata/v1/project/project-id": ("text/plain", self.project),
            "/computeMetadata/v1/project/numeric-project-id": ("text/plain", self.number),
            "/computeMetadata/v1/universe/universe-domain": ("text/plain", "googleapis.com"),
            "/computeMetadata/v1/instance/zone": ("text/plain", f"projects/{self.number}/zones/us-central1-a"),
            f"{account}/email": ("text/plain", self.email),
            f"{account}/": ("application/json", json.dumps({
                "aliases": ["default"], "email": self.email,
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"]})),
            f"{account}/token": ("application/json", json.dumps({
                "access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"})),
        }
        answer = answers.get(path) or answers.get(path.rstrip("/") + "/")
        return (200, *answer) if answer else None

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                answer = server._answer(urlsplit(self.path).path) if server.answering else None
                if not server.answering:
                    self._reply(404, "text/plain", "", flavor=False)
                elif self.headers.get(FLAVOR[0]) != FLAVOR[1]:
                    self._reply(403, "text/plain", "Missing Metadata-Flavor:Google header.")
                elif answer is None:
                    self._reply(404, "text/plain", "Not found")
                else:
                    self._reply(*answer)

            def _reply(self, status: int, content_type: str, body: str, flavor: bool = True):
                data = body.encode()
                self.send_response(status)
                if flavor:
                    self.send_header(*FLAVOR)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet: google-auth pings it often
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-metadata", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


_SESSION: FakeMetadataServer | None = None


def start_for_session() -> FakeMetadataServer:
    """Starts the session's server once (conftest.py may be imported twice, as `conftest` and `tests.conftest`)
    and makes it this process's and its children's only source of Google credentials: no key file, no gcloud
    login, and no NO_GCE_CHECK, which would hide it and let the suite pass here while failing on Google Cloud.
    google-auth reads GCE_METADATA_HOST once, when it is imported: it must not have been yet."""
    global _SESSION
    if _SESSION is not None:
        return _SESSION
    if "google.auth.compute_engine._metadata" in sys.modules:
        raise RuntimeError("google-auth was imported before tests/conftest.py could point it at the fake metadata "
                           "server")
    _SESSION = FakeMetadataServer()
    _SESSION.start()
    atexit.register(_SESSION.stop)
    gcloud_config = tempfile.mkdtemp(prefix="catsdogs-gcloud-")
    atexit.register(shutil.rmtree, gcloud_config, True)
    os.environ.update({"GCE_METADATA_HOST": _SESSION.host, "GCE_METADATA_IP": _SESSION.host,
                       "CLOUDSDK_CONFIG": gcloud_config})
    for name in ("NO_GCE_CHECK", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT"):
        os.environ.pop(name, None)
    return _SESSION
