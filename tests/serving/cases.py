"""Bad requests every endpoint must answer with a 400 and the same message: TorchServe and Ray Serve."""

from __future__ import annotations

import json

BAD_INPUTS = [
    ("malformed JSON", b'{"x": 5.0', "malformed JSON"),
    ("missing x", b'{"value": 5.0}', "unknown field"),
    ("empty object", b"{}", "missing field(s) ['x']"),
    ("string", b'{"x": "5"}', "found a string"),
    ("object", b'{"x": {"v": 5}}', "found a object"),
    ("bool", b'{"x": true}', "found a boolean"),
    ("null", b'{"x": null}', "found a null"),
    ("wrong nested shape", b'{"x": [[1.0, 2.0], [3.0, 4.0]]}', "has shape [2, 2]"),
    ("ragged", b'{"x": [[1.0], [2.0, 3.0]]}', "ragged"),
    ("empty list", b'{"x": []}', "empty list"),
    ("NaN", b'{"x": NaN}', "finite"),
    ("Infinity", b'{"x": [1.0, Infinity]}', "finite"),
    ("overflows float32", b'{"x": 1e39}', "too large for float32"),
    ("too many rows", json.dumps({"x": [1.0] * 4097}).encode(), "at most 4096"),
    ("top-level array", b"[5.0]", "JSON object"),
    ("empty body", b"", "empty body"),
    ("invalid UTF-8", b'{"x": "\xff\xfe"}', "UTF-8"),
    # Found by the fuzzer (pipeline/reliability/fuzz.py): these were 503s.
    ("integer beyond float64", b'{"x": ' + b"9" * 400 + b"}", "too large for float32"),
    ("integer over 4300 digits", b'{"x": [' + b"9" * 5000 + b"]}", "unreadable JSON"),
]
