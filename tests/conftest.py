"""Shared fixtures: one real run of every stage, copied for tests that damage it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.stage import Layout, Settings

REPO = Path(__file__).resolve().parent.parent


def run_all(settings: Settings) -> list:
    return [stage(settings) for stage in cli.STAGES.values()]


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
    shutil.copytree(built_root, root)
    return Settings(root=root), Layout(root.resolve(), "simple_nn")


@pytest.fixture
def built(built_root) -> tuple[Settings, Layout]:
    return Settings(root=built_root), Layout(built_root.resolve(), "simple_nn")


# Figures measured by tests (restart time, latency ratios), printed after the run.
MEASUREMENTS: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if MEASUREMENTS:
        terminalreporter.section("measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)
