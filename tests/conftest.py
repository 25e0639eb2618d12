"""Shared fixtures: one real run of every stage, copied for tests that damage it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.settings import Layout, Settings
from pipeline.stages import run_all
from tests.background import BUILDS, BUILTIN_CHAINS, Builds, chain_settings
from tests.helpers import copy_root


@pytest.fixture(scope="session")
def built_root(tmp_path_factory) -> Path:
    """A project folder where every stage has run once for simple_nn. Do not modify it."""
    root = tmp_path_factory.mktemp("built")
    run_all(Settings(root=root))
    return root


@pytest.fixture
def project(built_root, tmp_path) -> tuple[Settings, Layout]:
    """A private copy of the built project, free to damage."""
    root = tmp_path / "project"
    copy_root(built_root, root)
    return Settings(root=root), Layout(root.resolve(), "simple_nn")


@pytest.fixture(scope="session")
def chains(built_root, builds, tmp_path_factory):
    """model name -> (Settings, Layout) of a project where every stage ran for it: tests/background.py's BUILTIN_CHAINS
    built with the run, another on first use. Do not modify them."""
    built: dict[str, tuple[Settings, Layout]] = {"simple_nn": (Settings(root=built_root), Layout(built_root.resolve(), "simple_nn"))}

    def get(model: str) -> tuple[Settings, Layout]:
        if model not in built:
            if model in BUILTIN_CHAINS:
                settings = chain_settings(model, builds.folder("chains") / model)
            else:
                settings = chain_settings(model, tmp_path_factory.mktemp(model))
                run_all(settings)
            built[model] = (settings, Layout(settings.root.resolve(), model))
        return built[model]

    return get


@pytest.fixture(scope="session")
def digits_int8(chains, tmp_path_factory):
    """A copy of the digits_cnn project with its int8 variant built, gated and packaged. Do not modify it."""
    from pipeline.artifacts import files
    from pipeline.stages import variants

    _, layout = chains("digits_cnn")
    root = tmp_path_factory.mktemp("variants") / "digits_cnn"
    copy_root(layout.root, root)
    settings = Settings(model="digits_cnn", root=root)
    fp32_mar = files.sha256_file(Layout(root.resolve(), "digits_cnn").mar)
    results = list(variants.run(settings, ("int8",)))
    return settings, Layout(root.resolve(), "digits_cnn"), results, fp32_mar


@pytest.fixture(scope="session", autouse=True)
def builds(request, tmp_path_factory) -> Iterator[Builds]:
    """The session builds (tests/background.py) that the collected tests need, started now at the lowest CPU priority."""
    asked = {name for item in request.session.items for name in item.fixturenames}
    # A test that asks for one with request.getfixturevalue names it in a builds mark.
    asked |= {name for item in request.session.items for mark in item.iter_markers("builds") for name in mark.args}
    needed = [name for name in BUILDS if name in asked]
    builds = Builds(tmp_path_factory.mktemp("b"), needed)
    try:
        yield builds
    finally:
        BUILDS_DONE.extend(builds.summary())
        builds.stop()


@pytest.fixture(scope="session")
def cache_decoders(builds) -> Path:
    """tests/generation/checkpoints.py's decoders but llama (small_llama) through the chain: <kind>/ and <kind>-project/."""
    return builds.folder("cache_decoders")


@pytest.fixture(scope="session")
def library_decoders(builds) -> Path:
    """tests/stages/test_decoders.py's decoders through the chain as one logits pass: <name>/ and <name>-project/ each."""
    return builds.folder("library_decoders")


@pytest.fixture(scope="session")
def tiny_chains(builds) -> Path:
    """tests/test_real_models.py's tiny configs (but resnet_tiny) through every stage: <name>.py and <name>/ each."""
    return builds.folder("tiny_chains")


@pytest.fixture(scope="session")
def zoo(builds) -> Path:
    """The folder where every architecture of tests/zoo went through the chain, with their rows (tests.zoo.matrix.ROWS)."""
    return builds.folder("zoo")


@pytest.fixture(scope="session")
def text_image_root(builds) -> Path:
    """A project where bert_text and vit_images (tests/fixtures) went through every stage. Do not modify it:
    tests.serving.real_models.copy makes a private copy."""
    return builds.folder("text_image_root")


@pytest.fixture(scope="session")
def small_llama(builds) -> tuple[Path, Path]:
    """A small Llama (tests/generation/checkpoints.py) through the chain, once per session: (its checkpoint
    folder, the project root). The generation tests serve from the root; a test that writes reports
    into a project copies it. The root is short: TorchServe's sockets live under it."""
    root = builds.folder("small_llama")
    return root / "llama", root / "p"


@pytest.fixture(scope="session")
def hf_chains(builds) -> tuple[dict[str, Path], Path]:
    """(checkpoint folders by name, project root): tests/test_hf_checkpoint.py's checkpoints, the text
    classifier (sentiment) and the image classifier (flowers) through `pipeline all` in one project.
    Do not modify them: copy the root to serve from it."""
    root = builds.folder("hf_chains")
    folders = {name: Path(folder) for name, folder in json.loads((root / "folders.json").read_text()).items()}
    return folders, root / "project"


@pytest.fixture
def built(built_root) -> tuple[Settings, Layout]:
    return Settings(root=built_root), Layout(built_root.resolve(), "simple_nn")


# Figures measured by tests (restart time, latency ratios), printed after the run. They travel in each
# test's report (user_properties), so a plugin that runs tests in other processes passes them on.
MEASUREMENTS: list[str] = []
# Seconds spent per test file (setup, call and teardown; a module's shared fixture counts where it is built).
SECONDS_BY_FILE: Counter[str] = Counter()
# tests/background.py's builds: when each was done, and how long the tests waited for it.
BUILDS_DONE: list[str] = []


@pytest.fixture
def measure(request) -> Callable[[str], str]:
    """measure(line) keeps a measured figure for the run's summary and gives the line back (for an assert's message)."""

    def keep(line: str) -> str:
        request.node.user_properties.append(("measurement", line))
        return line

    return keep


def pytest_runtest_logreport(report):
    SECONDS_BY_FILE[report.nodeid.split("::")[0]] += report.duration
    if report.when == "call":
        MEASUREMENTS.extend(value for name, value in report.user_properties if name == "measurement")


def pytest_terminal_summary(terminalreporter):
    if MEASUREMENTS:
        terminalreporter.section("measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)
    if SECONDS_BY_FILE:
        terminalreporter.section("seconds by test file")
        for path, seconds in SECONDS_BY_FILE.most_common(25):
            terminalreporter.write_line(f"{seconds:8.1f} s  {path}")
    if BUILDS_DONE:
        terminalreporter.section("builds made beside the tests")
        for line in BUILDS_DONE:
            terminalreporter.write_line(line)
