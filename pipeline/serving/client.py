"""The HTTP client the project's own commands and tests use against a server on 127.0.0.1."""

from __future__ import annotations

import urllib.error
import urllib.request


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    token: str | None = None,
    content_type: str | None = "application/json",
    timeout: float = 30,
) -> tuple[int, bytes]:
    """(status, body) of one HTTP request; HTTP errors are answers, not exceptions."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type and body is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
