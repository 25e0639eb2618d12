"""The serving backends behind one interface: what `serve`, `stop` and `token --on NAME` call."""

from __future__ import annotations

import inspect

import pytest

from pipeline.cli import parser
from pipeline.serving.backends import BACKENDS, DEFAULT, ServeOptions


def test_every_on_choice_is_a_backend_and_the_default_is_torchserve():
    _, commands = parser()
    for verb in ("serve", "stop", "token"):
        on = next(a for a in commands[verb]._actions if a.dest == "on")
        assert sorted(on.choices) == sorted(BACKENDS) and on.default == DEFAULT == "torchserve"


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_each_backend_module_defines_the_interface(name):
    module = BACKENDS[name].server()
    for function in ("serve", "stop", "load_info", "served_line"):
        assert callable(getattr(module, function, None)), f"{module.__name__} has no {function}()"
    assert list(inspect.signature(module.serve).parameters) == ["settings", "options"]


def test_commands_name_the_backend_only_where_it_is_not_the_default():
    assert BACKENDS["torchserve"].command("stop") == "python -m pipeline stop"
    assert BACKENDS["ray"].command("token", ".venv/bin/python") == ".venv/bin/python -m pipeline token --on ray"


def test_the_ray_line_says_where_and_how_many():
    from pipeline.serving.ray.server import RayInfo

    info = RayInfo(model="m", run_dir="/nonexistent", inference="http://127.0.0.1:1", replicas="auto", proxy="http://127.0.0.1:1")
    line = BACKENDS["ray"].served_line(info, ServeOptions(replicas="auto", min_replicas=1, max_replicas=3))
    assert (
        line
        == "m is served by Ray Serve on a local Ray cluster on 127.0.0.1: autoscaling 1-3 replicas, through Serve's proxy at http://127.0.0.1:1"
    )
    direct = RayInfo(
        model="m", run_dir="/nonexistent", inference="http://127.0.0.1:30000", replicas="2", proxy="http://127.0.0.1:8000",
        replica_urls=("http://127.0.0.1:30000", "http://127.0.0.1:30001"),
    )  # fmt: skip
    line = BACKENDS["ray"].served_line(direct, ServeOptions(replicas="2"))
    assert line.startswith("m is served by Ray Serve on a local Ray cluster on 127.0.0.1: 2 replica(s), each at its own address ")
    assert "(http://127.0.0.1:30000, http://127.0.0.1:30001: direct ingress" in line and "proxy at http://127.0.0.1:8000" in line


def test_the_command_line_has_no_branch_per_backend():
    """The serving commands call BACKENDS[args.on]; they never ask which backend they hold."""
    from pipeline.cli import serving

    source = inspect.getsource(serving)
    # rayservice (the KubeRay manifest) is Ray's own command; serve, stop and token import no backend.
    assert "args.on ==" not in source and "ray.server" not in source and "pipeline.serving.torchserve" not in source
