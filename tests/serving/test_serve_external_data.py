"""A real TorchServe serving an archive whose model keeps its weights in model.onnx.data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.artifacts.names import ARCHIVE_DATA
from pipeline.runtimes.session import create_session
from pipeline.serving.torchserve import server as serve
from tests.helpers import external_data_project, needs_java

pytestmark = [pytest.mark.slow, needs_java]


def test_torchserve_unpacks_the_data_file_and_answers_one_request(tmp_path_factory):
    settings, layout = external_data_project(tmp_path_factory.mktemp("serve-external") / "project")
    info = serve.start(settings, auto_ports=True, timeout=120)
    try:
        unpacked = list(Path(info.run_dir, "tmp").rglob(ARCHIVE_DATA))
        assert unpacked, "TorchServe did not unpack model.onnx.data beside model.onnx"
        x = np.random.default_rng(11).standard_normal((2, 16)).astype(np.float32)
        status, body = info.predict(json.dumps({"x": x.tolist()}).encode())
        assert status == 200, body
        (want,) = create_session(layout.onnx).run(["y"], {"x": x})
        np.testing.assert_allclose(np.array(json.loads(body)["y"], dtype=np.float32), want, atol=1e-5)
    finally:
        serve.stop(settings)
    assert info.processes() == []
