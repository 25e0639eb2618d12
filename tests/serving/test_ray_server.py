"""The Ray launcher's checks that need no cluster: Ray's token mode, its token files, its environment."""

from __future__ import annotations

import stat

import pytest

from pipeline import cli
from pipeline.errors import PipelineError
from pipeline.serving.ray import server as ray_server


def test_token_files_are_private_from_their_creation(tmp_path):
    key, token = tmp_path / "key_file.json", tmp_path / ray_server.RAY_TOKEN
    token.write_text("someone else's")
    token.chmod(0o644)
    ray_server.write_key_file(key)
    ray_server.write_ray_token(token)  # replaced, not rewritten in place
    assert stat.S_IMODE(key.stat().st_mode) == stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text().strip()) == 64


def test_the_local_cluster_is_in_token_mode_whatever_the_environment_says(tmp_path):
    """RAY_AUTH_MODE=disabled is overridden; an inherited RAY_AUTH_TOKEN is dropped, since Ray
    would read it before the file; the cluster's address is never inherited."""
    environ = {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "t" * 32, "RAY_ADDRESS": "10.0.0.1:6379", "PATH": "/bin"}
    env = ray_server.local_cluster_env(tmp_path / ray_server.RAY_TOKEN, environ)
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / ray_server.RAY_TOKEN)
    assert "RAY_AUTH_TOKEN" not in env and "RAY_ADDRESS" not in env and env["PATH"] == "/bin"
    assert env.items() >= ray_server.LOOPBACK_ENV.items()


def test_the_local_cluster_runs_direct_ingress_unless_the_environment_turns_it_off(tmp_path):
    env = ray_server.local_cluster_env(tmp_path / ray_server.RAY_TOKEN, {})
    assert env.items() >= ray_server.DIRECT_INGRESS_ENV.items()
    off = ray_server.local_cluster_env(tmp_path / ray_server.RAY_TOKEN, {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"})
    assert off["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"  # a comparison run can turn the throughput mode off


def _private(path, text="a" * 64, mode=0o600):
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize(
    "environ, message",
    [
        ({}, "RAY_AUTH_MODE=unset"),
        ({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "t" * 32}, "RAY_AUTH_MODE=disabled"),
        ({"RAY_AUTH_MODE": "k8s", "RAY_AUTH_TOKEN": "t" * 32}, "RAY_AUTH_MODE=k8s"),
        ({"RAY_AUTH_MODE": "token"}, "is missing or empty"),  # HOME has no .ray/auth_token
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "  "}, "is missing or empty"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "{tmp}/none"}, "none is missing or empty"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "{open}"}, "open to other users (mode 644)"),
        ({"RAY_AUTH_MODE": "token", "HOME": "{home}"}, "open to other users (mode 644)"),  # Ray's ~/.ray/auth_token as Ray writes it
    ],
)
def test_a_cluster_by_address_is_refused_without_token_mode_and_a_private_token(tmp_path, environ, message):
    (tmp_path / "home" / ".ray").mkdir(parents=True)
    places = {"tmp": tmp_path, "open": _private(tmp_path / "open", mode=0o644), "home": tmp_path / "home"}
    _private(tmp_path / "home" / ".ray" / "auth_token", mode=0o644)
    environ = {"HOME": str(tmp_path), **{k: v.format(**places) for k, v in environ.items()}}
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        ray_server.require_token_auth(environ, "the Ray cluster at 10.0.0.1:6379")
    assert "RAY_AUTH_MODE=token" in refused.value.fix or "chmod 600" in refused.value.fix


@pytest.mark.parametrize(
    "environ",
    [
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t" * 32},
        {"RAY_AUTH_MODE": "TOKEN", "RAY_AUTH_TOKEN_PATH": "{private}"},  # Ray reads the mode case-blind
        {"RAY_AUTH_MODE": "token", "HOME": "{tmp}"},  # ~/.ray/auth_token, chmod 600
    ],
)
def test_token_mode_with_a_private_token_is_accepted(tmp_path, environ):
    (tmp_path / ".ray").mkdir()
    places = {"private": _private(tmp_path / "token"), "tmp": tmp_path}
    _private(tmp_path / ".ray" / "auth_token")
    ray_server.require_token_auth({k: v.format(**places) for k, v in environ.items()}, "the Ray cluster at 10.0.0.1:6379")


def test_serve_by_address_without_token_mode_exits_non_zero_before_anything_is_written(built, monkeypatch, capsys):
    pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")
    settings, layout = built
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 32)
    command = ["serve", "--on", "ray", "--address", "127.0.0.1:1", "--ports", "auto", "--root", str(layout.root)]
    assert cli.main(command) == 1
    err = capsys.readouterr().err
    assert "RAY_AUTH_MODE=disabled" in err and "set RAY_AUTH_MODE=token" in err
    assert not ray_server.run_dir(layout).exists()
