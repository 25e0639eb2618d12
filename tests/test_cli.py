"""The command line, as a user runs it: the whole chain in a temporary folder."""

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO


def pipeline(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_whole_chain_then_everything_skipped(tmp_path):
    first = pipeline("all", "--root", str(tmp_path), cwd=REPO)
    assert first.returncode == 0, first.stderr
    for stage in ("train", "trace", "export", "parity", "package"):
        assert f"✓ {stage}" in first.stdout
    assert "parity   PASS" in first.stdout
    assert "model_store/simple_nn.mar" in first.stdout
    assert (tmp_path / "model_store" / "simple_nn.mar").exists()
    assert (tmp_path / "reports" / "simple_nn" / "parity.md").exists()
    # No deprecation or exporter noise on the user's screen.
    assert "deprecated" not in first.stderr and "torchvision" not in first.stderr

    second = pipeline("all", "--root", str(tmp_path), cwd=REPO)
    assert second.returncode == 0, second.stderr
    assert "ran 0 stage(s)" in second.stdout
    assert second.stdout.count("skipped") >= 5


def test_error_exits_nonzero_with_fix(tmp_path):
    result = pipeline("parity", "--root", str(tmp_path), cwd=REPO)
    assert result.returncode == 1
    assert "error: [parity]" in result.stderr
    assert "what to do:" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_model_exits_nonzero(tmp_path):
    result = pipeline("train", "--model", "no_such_model", "--root", str(tmp_path), cwd=REPO)
    assert result.returncode == 1
    assert "no built-in model named 'no_such_model'" in result.stderr


def test_bad_batch_sizes_are_a_usage_error(tmp_path):
    result = pipeline("parity", "--parity-batch-sizes", "1,x", "--root", str(tmp_path), cwd=REPO)
    assert result.returncode == 2
    assert "comma-separated list of integers" in result.stderr


def test_help_lists_every_command():
    result = pipeline("--help", cwd=REPO)
    assert result.returncode == 0
    for command in ("train", "trace", "export", "parity", "package", "all", "serve", "stop", "token", "rayservice", "bench", "reliability"):
        assert f"    {command}" in result.stdout


@pytest.mark.parametrize(
    "args, usage",
    [
        (["train", "--ports", "auto"], "usage: python -m pipeline train"),
        (["serve", "--atol", "1"], "usage: python -m pipeline serve"),
        (["bench", "--force"], "usage: python -m pipeline bench"),
        (["package", "--seed", "3"], "usage: python -m pipeline package"),
    ],
)
def test_an_option_the_command_does_not_take_exits_2_with_its_usage(tmp_path, args, usage):
    result = pipeline(*args, "--root", str(tmp_path), cwd=REPO)
    assert result.returncode == 2
    assert usage in result.stderr and "unrecognized arguments" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing ran


def test_each_command_declares_only_its_own_options():
    from pipeline import cli

    _, commands = cli.parser()

    def options(name):
        return set(re.findall(r"--[a-z][a-z-]*", commands[name].format_usage()))

    assert "--ports" in options("serve") and "--ports" not in options("train")
    assert "--cuda-precision" in options("parity") and "--cuda-precision" not in options("train")
    assert "--engines" in options("bench") and "--quick" in options("reliability")
    assert "--kind" in options("token") and options("stop") == {"--model", "--root", "--on"}
    assert {"--on", "--replicas", "--address"} <= options("serve") and "--replicas" not in options("stop")
    assert "--archive-url" in options("rayservice") and "--on" not in options("rayservice")
