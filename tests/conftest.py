"""Shared fixtures: one real run of every stage, copied for tests that damage it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.settings import Layout, Settings
from pipeline.stages import run_all
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
def chains(built_root, tmp_path_factory):
    """model name -> (Settings, Layout) of a project where every stage ran for it; built on first use. Do not modify them."""
    built: dict[str, tuple[Settings, Layout]] = {"simple_nn": (Settings(root=built_root), Layout(built_root.resolve(), "simple_nn"))}

    def get(model: str) -> tuple[Settings, Layout]:
        if model not in built:
            root = tmp_path_factory.mktemp(model)
            # The package is compiled for simple_nn (built_root) and the zoo; here it would only add compile time.
            settings = Settings(model=model, root=root, pt2=False)
            run_all(settings)
            built[model] = (settings, Layout(root.resolve(), model))
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


@pytest.fixture(scope="session")
def text_image_root(tmp_path_factory) -> Path:
    """A project where bert_text and vit_images (tests/fixtures) went through every stage. Do not modify it:
    tests.serving.real_models.copy makes a private copy."""
    from tests.serving import real_models

    root = tmp_path_factory.mktemp("text-image")
    real_models.build(root)
    return root


@pytest.fixture(scope="session")
def small_llama(tmp_path_factory) -> tuple[Path, Path]:
    """A small Llama (tests/generation/checkpoints.py) through the chain, once per session: (its checkpoint
    folder, the project root). The generation tests serve from the root; a test that writes reports
    into a project copies it. The root is short: TorchServe's sockets live under it."""
    from tests.generation.checkpoints import run_chain, save_decoder

    root = tmp_path_factory.mktemp("gen")
    folder = save_decoder("llama", root / "llama")
    run_chain(f"hf:{folder}", root / "p")
    return folder, root / "p"


@pytest.fixture(scope="session")
def hf_chains(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    """(checkpoint folders by name, project root): tests/test_hf_checkpoint.py's checkpoints, the text
    classifier (sentiment) and the image classifier (flowers) through `pipeline all` in one project.
    Do not modify them: copy the root to serve from it."""
    from pipeline import cli
    from tests.test_hf_checkpoint import make_checkpoints

    folders = make_checkpoints(tmp_path_factory.mktemp("hf-checkpoints"))
    root = tmp_path_factory.mktemp("hf-chains")
    for name in ("sentiment", "flowers"):
        assert cli.main(["all", "--model", f"hf:{folders[name]}", "--root", str(root), "--parity-batch-sizes", "1,2,7", "--no-pt2"]) == 0
    return folders, root


@pytest.fixture
def built(built_root) -> tuple[Settings, Layout]:
    return Settings(root=built_root), Layout(built_root.resolve(), "simple_nn")


# Figures measured by tests (restart time, latency ratios), printed after the run. They travel in each
# test's report (user_properties), so a plugin that runs tests in other processes passes them on.
MEASUREMENTS: list[str] = []
# Seconds spent per test file (setup, call and teardown; a module's shared fixture counts where it is built).
SECONDS_BY_FILE: Counter[str] = Counter()


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
