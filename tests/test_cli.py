"""The command line, as a user runs it, in a temporary folder (the first `pipeline all` from nothing: tests/test_wheel.py)."""

import dataclasses
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest

from pipeline import cli
from tests.helpers import REPO


def pipeline(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


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
    for command in (
        "train",
        "trace",
        "export",
        "parity",
        "package",
        "all",
        "serve",
        "stop",
        "token",
        "rayservice",
        "generate",
        "bench",
        "reliability",
    ):
        assert f"    {command}" in result.stdout


@pytest.mark.parametrize(
    "args, said",
    [
        (["exprot"], "no command 'exprot'; did you mean export?; the commands are train, trace, export"),
        (["all", "--modle", "x"], "unrecognized arguments: --modle x; did you mean --model?"),
        (["generate", "--prompt", "Hi", "--max-new-tokns=4"], "did you mean --max-new-tokens?"),
        (["all", "--zzz"], "unrecognized arguments: --zzz\n"),  # nothing close: no guess
    ],
)
def test_a_typo_in_a_command_or_option_gets_a_suggestion(capsys, args, said):
    with pytest.raises(SystemExit) as exited:
        cli.parse(args)
    assert exited.value.code == 2 and said in capsys.readouterr().err


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
    assert "--kind" in options("token") and options("stop") == {"--model", "--task", "--root", "--on"}
    assert {"--on", "--replicas", "--address"} <= options("serve") and "--replicas" not in options("stop")
    assert "--archive-url" in options("rayservice") and "--on" not in options("rayservice")


def _recording_server() -> tuple[http.server.HTTPServer, list[tuple[dict[str, str], bytes]]]:
    """A stand-in for the server's HTTP API on 127.0.0.1: answers every POST with 200, keeps its headers and body."""
    seen: list[tuple[dict[str, str], bytes]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    stand_in = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    return stand_in, seen


@pytest.mark.skipif(shutil.which("curl") is None, reason="the printed command is a curl")
@pytest.mark.parametrize("on", ["torchserve", "ray"])
def test_the_printed_curl_reads_the_token_from_its_stdin_not_its_arguments(tmp_path, monkeypatch, capsys, on):
    """`serve` prints a request a shell runs as is: the token reaches the server, and no command line (what ps shows) holds it."""
    from pipeline import cli
    from pipeline.serving.ray import server as ray_server
    from pipeline.serving.torchserve import server

    token = "a-token-nobody-else-may-see"
    stand_in, seen = _recording_server()
    url = f"http://127.0.0.1:{stand_in.server_port}"
    folder = tmp_path / "run" / "simple_nn" / ("ray" if on == "ray" else "")
    folder.mkdir(parents=True)
    (folder / "key_file.json").write_text(json.dumps({"inference": {"key": token}}))
    where = {"model": "simple_nn", "run_dir": str(folder), "inference": url}
    info = (
        ray_server.RayInfo(**where, replicas="1")
        if on == "ray"
        else server.ServerInfo(**where, pid=1, management=url, metrics=url, ports={})
    )
    (folder / "server.json").write_text(json.dumps(dataclasses.asdict(info)))  # what `token` reads, in its own process
    monkeypatch.setattr(ray_server if on == "ray" else server, "start", lambda settings, **kw: info)
    monkeypatch.setattr(server.ServerInfo, "workers", lambda self: [])
    monkeypatch.chdir(tmp_path)
    # curl, as the shell finds it, writes down its arguments (what ps shows) before it runs.
    shim = tmp_path / "bin" / "curl"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/curl-argv\nexec {shutil.which("curl")} "$@"\n')
    shim.chmod(0o755)
    try:
        assert cli.main(["serve", "--on", on]) == 0
        [line] = [line.split("try", 1)[1] for line in capsys.readouterr().out.splitlines() if line.strip().startswith("try")]
        path = f"{shim.parent}{os.pathsep}{os.environ['PATH']}"
        ran = subprocess.run(
            ["sh", "-c", line], cwd=tmp_path, env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=120
        )
    finally:
        stand_in.shutdown()
        stand_in.server_close()
    assert ran.returncode == 0, ran.stderr
    assert token not in line and token not in (tmp_path / "curl-argv").read_text()
    [(headers, body)] = seen
    assert headers["Authorization"] == f"Bearer {token}" and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"x": 5.0}


def test_the_command_line_is_the_top_layer():
    """argparse lives in pipeline/cli/ only, and no other module of the package imports pipeline.cli."""
    import ast

    from tests.helpers import REPO

    offenders = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("pipeline/cli/") or rel == "pipeline/__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                if name == "argparse" or name == "pipeline.cli" or name.startswith("pipeline.cli."):
                    offenders.append(f"{rel}:{node.lineno} imports {name}")
    assert not offenders, offenders


def test_token_names_the_model_that_is_served_when_it_is_not_the_one_asked_for(tmp_path, capsys):
    """A server record of another model in the project: the error says which is served, not only that simple_nn is not."""
    run = tmp_path / "run" / "llama"
    run.mkdir(parents=True)
    record = {
        "model": "llama",
        "pid": 1,
        "run_dir": str(run),
        "inference": "http://127.0.0.1:1",
        "management": "",
        "metrics": "",
        "ports": {},
    }
    (run / "server.json").write_text(json.dumps(record))
    (run / "key_file.json").write_text(json.dumps({"inference": {"key": "k"}}))
    assert cli.main(["token", "--root", str(tmp_path)]) == 1
    assert "no simple_nn TorchServe server is running; TorchServe serves llama here" in capsys.readouterr().err
    assert cli.main(["token", "--root", str(tmp_path / "empty")]) == 1
    assert "start one with python -m pipeline serve" in capsys.readouterr().err
