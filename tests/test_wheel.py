"""The package as a user installs it: a wheel, not an editable checkout, used in an empty folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.serving.common.client import http
from tests.background import keep, kept
from tests.helpers import REPO, needs_java

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd, env, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@dataclass
class Installed:
    """The wheel installed into a folder of its own, and its first `pipeline all` in an empty one."""

    env: dict[str, str]
    work: Path
    first: subprocess.CompletedProcess


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site)}  # the wheel's copy, not the checkout: PYTHONPATH comes before the editable install


def install(folder: Path) -> None:
    """The wheel built, installed into folder/site, and its first `pipeline all` run in the empty folder/w:
    the session's installed_wheel (tests/background.py)."""
    dist, site, work = folder / "dist", folder / "site", folder / "w"
    work.mkdir()
    # Built from a copy of the checkout's own files: setuptools reuses a build/ folder, which keeps modules since deleted.
    source = folder / "source"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file() and not (REPO / name).is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    (source / "pipeline" / "handlers").symlink_to("../handlers")
    built = _run(["-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)], source, os.environ)
    assert built.returncode == 0, built.stderr
    [wheel] = dist.glob("pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"pipeline/handlers/onnx_handler.py", "pipeline/serving/torchserve/torchserve.properties"} <= names
    # Every package of the checkout is in the wheel (pyproject lists them one by one).
    packages = {p.relative_to(REPO).as_posix() for p in (REPO / "pipeline").rglob("__init__.py")}
    assert packages <= names, sorted(packages - names)
    installed = _run(["-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], folder, os.environ)
    assert installed.returncode == 0, installed.stderr
    where = _run(["-c", "import pipeline; print(pipeline.__file__)"], work, _env(site))
    assert where.stdout.strip().startswith(str(site)), where.stdout
    # The user's first `pipeline all`, from nothing: the whole chain of its own.
    keep(folder, _run(["-m", "pipeline", "all"], work, _env(site)))


@pytest.fixture(scope="module")
def installed_wheel(builds) -> Installed:
    folder = builds.folder("installed_wheel")
    return Installed(_env(folder / "site"), folder / "w", kept(folder))


def test_the_first_all_runs_every_stage_then_the_next_skips_them(installed_wheel):
    first, work = installed_wheel.first, installed_wheel.work
    assert first.returncode == 0, first.stderr
    for stage in ("train", "trace", "export", "pt2", "parity", "package"):
        assert f"✓ {stage}" in first.stdout
    assert "parity   PASS" in first.stdout
    assert "model_store/simple_nn.mar" in first.stdout
    assert (work / "model_store" / "simple_nn.mar").is_file() and (work / "reports" / "simple_nn" / "parity.md").is_file()
    # No deprecation or exporter noise on the user's screen.
    assert "deprecated" not in first.stderr and "torchvision" not in first.stderr

    second = _run(["-m", "pipeline", "all"], work, installed_wheel.env)
    assert second.returncode == 0, second.stderr
    assert "ran 0 stage(s)" in second.stdout
    assert second.stdout.count("skipped") >= 5


@needs_java
def test_the_installed_wheel_serves_its_archive(installed_wheel):
    env, work = installed_wheel.env, installed_wheel.work
    assert installed_wheel.first.returncode == 0, installed_wheel.first.stderr
    try:
        served = _run(["-m", "pipeline", "serve", "--ports", "auto", "--timeout", "120"], work, env)
        assert served.returncode == 0, served.stdout + served.stderr
        info = json.loads((work / "run" / "simple_nn" / "server.json").read_text())
        token = json.loads((work / "run" / "simple_nn" / "key_file.json").read_text())["inference"]["key"]
        status, body = http("POST", f"{info['inference']}/predictions/simple_nn", b'{"x": 4.0}', token)
        assert status == 200 and json.loads(body)["y"] == pytest.approx(9.0, abs=0.05)
    finally:
        stopped = _run(["-m", "pipeline", "stop"], work, env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
