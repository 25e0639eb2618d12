"""The command line, as a user runs it: the whole chain in a temporary folder."""

import subprocess
import sys

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
