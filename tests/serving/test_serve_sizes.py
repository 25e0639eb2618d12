"""Answers of real size against a real TorchServe on 127.0.0.1: a model whose answers are megabytes.

TorchServe's frontend refuses a worker's message with any answer over its max_response_size
(TooLongFrameException), then marks the worker dead and fails every request of the batch.
`serve` sets that limit from the archive's contract, and the handler refuses a larger answer
itself: a 413 for that request alone, with JSON that says what to do.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pipeline.serving.common.contract import MAX_RESPONSE_BYTES
from pipeline.serving.torchserve import server as serve
from pipeline.serving.torchserve.handler import PER_BATCH_LINE
from pipeline.settings import Settings
from pipeline.stages import run_all
from tests.helpers import needs_java
from tests.serving import wide_model

pytestmark = [pytest.mark.slow, needs_java]
BATCH_DELAY_MS = 300  # long enough that requests sent together share one batch


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """TorchServe serving tests/serving/wide_model.py, its worker logging each batch it receives."""
    root = tmp_path_factory.mktemp("wide") / "project"
    settings = Settings(
        model=str(Path(wide_model.__file__).resolve()),
        root=root,
        parity_batch_sizes=(1, 2, 7),
        serve_max_batch_delay_ms=BATCH_DELAY_MS,
        pt2=False,
    )
    run_all(settings)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PIPELINE_WORKER_LOG_PER_BATCH", "1")  # the worker inherits it at start
        info = serve.start(settings, auto_ports=True, timeout=120)
    yield info
    serve.stop(settings)
    assert info.processes() == [], "server processes left behind"


def post(info, tokens) -> tuple[int, bytes]:
    return info.predict(json.dumps({"tokens": tokens}).encode(), timeout=60)


def worker_pids(info) -> list[int]:
    return [w["pid"] for w in info.workers()]


def batches_received(info) -> int:
    log = Path(info.run_dir) / "logs" / "model_log.log"
    return log.read_text(errors="replace").count(PER_BATCH_LINE.split(" at:")[0]) if log.exists() else 0


def _settled(count, timeout: float = 10.0) -> int:
    """The count once it has stopped changing (TorchServe writes its logs asynchronously)."""
    deadline, last = time.monotonic() + timeout, count()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = count()
        if now == last:
            return now
        last = now
    return last


def test_the_server_takes_the_sizes_the_archive_declares(wide):
    props = serve.read_properties(Path(wide.run_dir) / "config.properties")
    mar = Path(wide.run_dir).parents[1] / "model_store" / "wide_model.mar"
    assert serve.size_caps(mar) == {"max_request_size": 1 << 20, "max_response_size": MAX_RESPONSE_BYTES}  # from its io_contract.json
    assert int(props["max_response_size"]) == MAX_RESPONSE_BYTES and int(props["max_request_size"]) == 1 << 20


def test_an_answer_over_one_mib_is_answered(wide):
    """GPT-2's 5-token example (5 MB of logits) killed the worker at TorchServe's stock 1 MiB."""
    status, body = post(wide, [1] * 8)
    assert status == 200 and len(body) > 2 << 20
    np.testing.assert_allclose(json.loads(body)["rows"], np.full((8, wide_model.WIDTH), 1 / 3), rtol=1e-6)


def test_an_answer_over_the_limit_is_a_413_alone_in_its_batch_and_the_worker_lives(wide):
    before, batches = worker_pids(wide), _settled(lambda: batches_received(wide))
    requests = {"oversized": [1] * wide_model.MAX_LENGTH, "large": [2] * 8, "small": [3]}
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = dict(zip(requests, pool.map(lambda tokens: post(wide, tokens), requests.values())))
    assert _settled(lambda: batches_received(wide)) == batches + 1, "the three requests were not one batch"
    status, body = answers["oversized"]
    refused = json.loads(body)
    assert status == 413 and refused["code"] == 413, body[:300]
    assert f"over this model's {MAX_RESPONSE_BYTES}" in refused["error"] and "max_response_bytes" in refused["error"]
    assert [answers[k][0] for k in ("large", "small")] == [200, 200]
    assert json.loads(answers["small"][1])["rows"] == [[1.0] * wide_model.WIDTH]  # one token: 3 / 3
    assert worker_pids(wide) == before  # the same worker, never restarted
    assert post(wide, [1, 2])[0] == 200
    assert "TooLongFrameException" not in (Path(wide.run_dir) / "logs" / "ts_log.log").read_text(errors="replace")


def test_a_sequence_past_max_lengths_is_a_400_naming_the_maximum(wide):
    before = worker_pids(wide)
    status, body = post(wide, [1] * (wide_model.MAX_LENGTH + 1))
    answer = json.loads(body)
    assert status == 400 and answer["code"] == 400
    assert f"'tokens' is {wide_model.MAX_LENGTH + 1} long along 'seq'; this model takes at most {wide_model.MAX_LENGTH}" in answer["error"]
    assert worker_pids(wide) == before
