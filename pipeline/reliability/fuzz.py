"""Fuzz the served endpoint with hypothesis: hostile bodies by class, every status counted.

The promise under test: no body makes the server answer 5xx (or drop the
connection), the worker process survives all of them, and a valid request gets
the same answer afterwards as before. Generation is derandomized and done before
any request is sent, so the same bodies go out on every run and a failure found
once is found again.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipeline.serving.common.client import http
from pipeline.serving.torchserve.server import ServerInfo

MAX_REQUEST = 1 << 20  # pipeline/serving/torchserve/torchserve.properties: max_request_size
# Form-encoded bodies (also what a POST without Content-Type is taken for) are left out
# on purpose: TorchServe 0.12's frontend (Netty's form decoder) answers 500 to a bad
# %-escape such as `x=%zz` before the worker sees it. That is reported on its own
# (FORM_BODY_500); it is not fixable in the handler.
CONTENT_TYPES = ("text/plain", "application/octet-stream", "multipart/form-data; boundary=xyz", "application/json; charset=latin-1")
FORM_BODY_500 = (b"x=%zz", "application/x-www-form-urlencoded")


def _dumps(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8")


def _json_values():
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6), max_leaves=30
    )


def body_classes(name: str) -> dict[str, st.SearchStrategy[tuple[bytes, str]]]:
    """Strategies of (body, content type) by class, for a model whose first input is `name`."""
    key = json.dumps(name).encode()
    as_json = "application/json"

    def field(raw: bytes) -> bytes:
        return b"{" + key + b": " + raw + b"}"

    numbers = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    huge = st.one_of(
        st.integers(300, 6000).map(lambda n: b"9" * n),  # beyond float64, beyond 4300 digits
        st.integers(39, 400).map(lambda e: f"1e{e}".encode()),  # beyond float32, beyond float64
        st.integers(2**64, 2**2000).map(lambda i: str(-i).encode()),
        st.sampled_from([b"1.7976931348623157e308", b"-3.5e38", b"1e-400", b"123456789012345678901234567890.5"]),
    )
    nesting = st.integers(2, 200_000)
    return {
        "random JSON": _json_values().map(lambda v: (_dumps(v), as_json)),
        "random JSON in the field": _json_values().map(lambda v: (_dumps({name: v}), as_json)),
        "wrong types": st.one_of(
            st.text(),
            st.booleans(),
            st.none(),
            st.dictionaries(st.text(max_size=5), numbers, max_size=3),
            st.lists(st.text(max_size=3), min_size=1, max_size=5),
            st.lists(st.one_of(numbers, st.text(max_size=2), st.none()), min_size=2, max_size=6),
        ).map(lambda v: (_dumps({name: v}), as_json)),
        "huge numbers": st.one_of(
            huge.map(field), st.lists(huge, min_size=1, max_size=4).map(lambda xs: field(b"[" + b", ".join(xs) + b"]"))
        ).map(lambda b: (b, as_json)),
        "deep nesting": st.tuples(nesting, st.booleans()).map(
            lambda t: ((field(b"[" * t[0] + b"1.0" + b"]" * t[0]) if t[1] else b'{"a": ' * t[0] + b"1" + b"}" * t[0]), as_json)
        ),
        "invalid UTF-8": st.tuples(st.binary(max_size=40), st.binary(min_size=1, max_size=4).map(lambda b: bytes(0x80 | c for c in b))).map(
            lambda t: (field(b'"' + t[0] + t[1] + b'"'), as_json)
        ),
        "empty or blank": st.sampled_from([b"", b" ", b"\n\t ", b"null", b"{}", b"[]", b'""', b"0"]).map(lambda b: (b, as_json)),
        "oversized (over 1 MiB)": st.integers(MAX_REQUEST + 1, MAX_REQUEST + (256 << 10)).map(
            lambda n: (field(b"[" + b"1.0," * ((n - len(key) - 6) // 4) + b"1.0]"), as_json)
        ),
        "random bytes": st.binary(max_size=2000).map(lambda b: (b, as_json)),
        "other content types": st.tuples(st.binary(max_size=200) | _json_values().map(_dumps), st.sampled_from(CONTENT_TYPES)),
        "valid": st.one_of(numbers.map(lambda x: {name: x}), st.lists(numbers, min_size=1, max_size=50).map(lambda xs: {name: xs})).map(
            lambda v: (_dumps(v), as_json)
        ),
    }


@dataclass(frozen=True)
class FuzzResult:
    """What the fuzzer sent and what came back: status counts by body class."""

    requests: int
    by_class: dict[str, dict[str, int]]
    failures: list[dict]  # 5xx, no answer, or a valid body refused
    worker_pids_before: list[int]
    worker_pids_after: list[int]
    valid_before: tuple[int, str]
    valid_after: tuple[int, str]
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        return sum(n for codes in self.by_class.values() for code, n in codes.items() if code == "0" or code.startswith("5"))

    @property
    def survived(self) -> bool:
        return (
            not self.failures
            and self.worker_pids_before == self.worker_pids_after
            and self.valid_after == self.valid_before
            and self.valid_before[0] == 200
        )


def _labelled(label: str, strategy: st.SearchStrategy[tuple[bytes, str]]) -> st.SearchStrategy[tuple[str, bytes, str]]:
    return strategy.map(lambda case: (label, *case))


def generate_bodies(name: str, examples: int) -> list[tuple[str, bytes, str]]:
    """`examples` (class, body, content type) triples from hypothesis, the same on every run.

    Generated first and sent afterwards: hypothesis adapts its generation to how long
    each example takes, so sending inside @given would make the bodies depend on the
    server's timing.
    """
    classes = body_classes(name)
    labelled = st.one_of(*(_labelled(label, strategy) for label, strategy in classes.items()))
    cases: list[tuple[str, bytes, str]] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(labelled)
    def collect(case):
        cases.append(case)

    collect()
    return cases


def fuzz_endpoint(info: ServerInfo, name: str, valid_body: bytes, examples: int = 500) -> FuzzResult:
    """Send `examples` hypothesis-generated bodies to the model's endpoint and count the answers."""
    token = info.token("inference")
    cases = generate_bodies(name, examples)

    def valid() -> tuple[int, str]:
        status, answer = info.predict(valid_body, token)
        return status, answer.decode("utf-8", "replace")

    pids_before, valid_before = _pids(info), valid()
    by_class: dict[str, Counter] = {label: Counter() for label in body_classes(name)}
    statuses: Counter = Counter()
    failures = []
    for label, body, content_type in cases:
        try:
            if len(body) > MAX_REQUEST:
                status, answer = post_expecting_continue(info.predictions_url, body, token)
            else:
                status, answer = http("POST", info.predictions_url, body, token, content_type=content_type, timeout=60)
        except OSError as exc:  # connection reset or refused: no answer at all
            status, answer = 0, str(exc).encode()
        by_class[label][str(status)] += 1
        statuses[str(status)] += 1
        if status == 0 or status >= 500 or (label == "valid" and status != 200):
            failures.append(
                {
                    "class": label,
                    "status": status,
                    "content_type": content_type,
                    "body": body[:160].decode("utf-8", "replace"),
                    "answer": answer[:200].decode("utf-8", "replace"),
                }
            )
    pids_after, valid_after = _pids(info), valid()
    return FuzzResult(
        len(cases),
        {k: dict(sorted(v.items())) for k, v in by_class.items()},
        failures,
        pids_before,
        pids_after,
        valid_before,
        valid_after,
        dict(sorted(statuses.items())),
    )


def post_expecting_continue(url: str, body: bytes, token: str, timeout: float = 60) -> tuple[int, bytes]:
    """POST with `Expect: 100-continue`, as curl does for large bodies: the body is sent
    only if the server agrees, so a refusal (413) is read instead of racing the upload.

    A plain client that uploads 1 MiB regardless sees the server's 413 and close as a
    connection reset about a third of the time.
    """
    parts = urlsplit(url)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        status, answer = _read_response(sock)
        if status == 100:
            sock.sendall(body)
            status, answer = _read_response(sock)
    return status, answer


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before a complete response head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:] if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest[:length]


def _pids(info: ServerInfo) -> list[int]:
    return sorted(w["pid"] for w in info.workers())
