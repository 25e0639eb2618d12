"""The HTTP client the project's own commands and tests use against a server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import socket
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from urllib.parse import urlsplit


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    token: str | None = None,
    content_type: str | None = "application/json",
    timeout: float = 30,
    unix_socket: Path | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """(status, body) of one HTTP request; HTTP errors are answers, not exceptions.
    With `unix_socket`, the request goes to the server listening there (the URL gives its path).

    A server may answer before it has read the whole body (a 413 from the declared length) and
    close: the answer it sent is read all the same, as curl and urllib3 read it, where urllib
    would raise a broken pipe.
    """
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type and body is not None:
        headers["Content-Type"] = content_type
    parts = urlsplit(url)
    # A caller's time left may have run out (or below zero) by now: the socket then times out at once.
    connection = (
        HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=max(timeout, 0.001))
        if unix_socket is None
        else UnixHTTPConnection(unix_socket, timeout=max(timeout, 0.001))
    )
    try:
        try:
            connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer, if it sent one, is read below
        response = connection.getresponse()
        return response.status, response.read()
    except HTTPException as exc:  # a malformed or cut answer: an OSError, as every other failure to be answered
        raise ConnectionError(f"{method} {url}: no valid answer ({type(exc).__name__}: {exc})") from exc
    finally:
        connection.close()


class UnixHTTPConnection(HTTPConnection):
    """An HTTP connection to a server on a Unix socket (TorchServe's APIs behind the proxy)."""

    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Endpoint:
    """What the record of every running server shares (TorchServe's ServerInfo, Ray's RayInfo):
    its folder's key file, the token in it, and the model's prediction route."""

    model: str
    run_dir: str
    inference: str  # the inference address, http://127.0.0.1:<port>

    @property
    def key_file(self) -> Path:
        return Path(self.run_dir) / "key_file.json"

    def token(self, kind: str = "inference") -> str:
        return json.loads(self.key_file.read_text())[kind]["key"]

    @property
    def predictions_url(self) -> str:
        return f"{self.inference}/predictions/{self.model}"

    @property
    def infer_url(self) -> str:
        """The Open Inference Protocol route (pipeline.serving.common.oip), on TorchServe as on Ray."""
        return f"{self.inference}/v2/models/{self.model}/infer"

    @property
    def metrics_url(self) -> str:
        """Prometheus text (pipeline.serving.common.metrics), behind the inference token."""
        return f"{self.inference}/metrics"

    def predict(self, body: bytes, token: str | None = None, timeout: float = 30, **kw) -> tuple[int, bytes]:
        return http("POST", self.predictions_url, body, token or self.token("inference"), timeout=timeout, **kw)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` TCP ports free on 127.0.0.1 now, all different: each is held until all are picked."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
