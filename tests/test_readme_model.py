"""The README's example model, copied into a file outside the repository, goes through everything unchanged."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.models import load_spec
from pipeline.serving.torchserve import server as serve
from pipeline.settings import Settings
from tests.background import keep, kept
from tests.helpers import REPO

pytestmark = pytest.mark.slow


def readme_model_source() -> str:
    """The first ```python block of the README's "Bring your own model" section."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Bring your own model\n", 1)
    assert len(section) == 2, "README.md has no '## Bring your own model' section"
    block = re.search(r"```python\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    assert block, "the section has no ```python block"
    return block.group(1)


def build_readme_chain(folder: Path) -> None:
    """The README's model copied into folder/my_model.py and run through `pipeline all` as a user runs it, from
    that folder with the path of their file, into folder/p: the session's readme_chain (tests/background.py)."""
    (folder / "my_model.py").write_text(readme_model_source())
    command = [sys.executable, "-m", "pipeline", "all", "--model", "my_model.py", "--root", "p"]
    keep(folder, subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600))


@pytest.fixture(scope="module")
def readme_chain(builds) -> Path:
    """The folder `build_readme_chain` built. Short: TorchServe's worker socket lives under it, and AF_UNIX paths stop at 107 bytes."""
    return builds.folder("readme_chain")


def test_readme_model_goes_through_the_chain_and_serves(readme_chain):
    user, result = readme_chain, kept(readme_chain)
    assert result.returncode == 0, result.stderr
    assert "parity   PASS" in result.stdout and "model_store/my_model.mar" in result.stdout

    spec = load_spec(str(user / "my_model.py"))
    settings = Settings(model=str(user / "my_model.py"), root=user / "p")
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs java (.ci/run installs it)")
    info = serve.start(settings, auto_ports=True, timeout=120)
    try:
        status, body = info.predict(json.dumps(spec.example_request).encode())
        assert status == 200, body
        # The file fits y = x·(1, -2, 0.5) + 0.25; the README quotes these answers.
        assert json.loads(body)["y"] == pytest.approx(1.5, abs=0.05)
        status, body = info.predict(json.dumps({"features": [[0.1, -0.4, 0.7], [0, 0, 0]]}).encode())
        assert status == 200 and json.loads(body)["y"] == pytest.approx([1.5, 0.25], abs=0.05)
    finally:
        serve.stop(settings)
    assert info.processes() == []
