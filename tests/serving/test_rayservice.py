"""The KubeRay RayService file cannot drift from the application: its entry point, options, hash and Ray version are the code's."""

from __future__ import annotations

import importlib
import importlib.metadata
import re

import pytest
import yaml

from pipeline import cli
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import MAR
from pipeline.serving.ray import app as ray_app
from pipeline.serving.ray import rayservice
from tests.helpers import REPO


def _entry_point(import_path: str):
    module, _, name = import_path.partition(":")
    return getattr(importlib.import_module(module), name)


def test_package_writes_it_next_to_the_archive(built):
    _, layout = built
    path = rayservice.path_for(layout)
    assert path.parent == layout.mar.parent and path.exists()
    document, serve_config = rayservice.read(path)
    assert document["apiVersion"] == "ray.io/v1" and document["kind"] == "RayService"
    [app] = serve_config["applications"]
    assert _entry_point(app["import_path"]) is ray_app.build
    options = ray_app.RayAppOptions.from_args(app["args"])  # the options a replica will parse
    assert options.sha256 == Manifest(layout.root, "simple_nn").records[MAR].sha256
    assert options.token_file.startswith(rayservice.TOKEN_DIR)
    mounts = document["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(options.archive.startswith(m["mountPath"] + "/") for m in mounts)  # the archive path lies on a mounted volume
    assert serve_config["logging_config"] == ray_app.QUIET


def test_ray_version_is_the_pinned_one():
    pinned = re.search(r"^ray==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pinned and pinned.group(1) == rayservice.RAY_VERSION
    try:
        assert importlib.metadata.version("ray") == rayservice.RAY_VERSION
    except importlib.metadata.PackageNotFoundError:
        pass  # the ray extra is not installed here; the pin is what the file names


def test_its_args_build_the_real_application(built, tmp_path):
    """The Serve config's args, with a local archive, make the deployment the cluster would run."""
    pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")
    _, layout = built
    assert (
        cli.main(["rayservice", "--root", str(layout.root), "--replicas", "auto", "--archive-url", "https://models.example.com/m.mar"]) == 0
    )
    _, serve_config = rayservice.read(rayservice.path_for(layout))
    args = serve_config["applications"][0]["args"]
    assert args["archive"] == "https://models.example.com/m.mar"
    from ray.serve import Application

    assert isinstance(_entry_point(serve_config["applications"][0]["import_path"])(args), Application)
    deployment = ray_app.deployment(ray_app.RayAppOptions.from_args(args))  # what build() binds
    assert deployment.func_or_class is ray_app.ModelServer
    assert deployment.max_ongoing_requests >= 16 and deployment.ray_actor_options["num_cpus"] == 1.0
    assert deployment.max_queued_requests == ray_app.RayAppOptions.max_queued_requests
    from ray.serve.schema import HTTPOptionsSchema

    assert set(serve_config["http_options"]) <= set(HTTPOptionsSchema.model_fields)  # Serve's own names, or it ignores them
    assert ray_app.deployment_options(ray_app.RayAppOptions.from_args(args))["autoscaling_config"]["max_replicas"] == args["max_replicas"]
    rayservice.write(layout)  # leave the shared project as the package stage wrote it


def test_a_bad_option_is_refused_before_anything_is_written(built, capsys):
    _, layout = built
    before = rayservice.path_for(layout).read_text()
    assert cli.main(["rayservice", "--root", str(layout.root), "--replicas", "none"]) == 1
    assert "replicas must be a positive integer or 'auto'" in capsys.readouterr().err
    assert rayservice.path_for(layout).read_text() == before


def _templates(service: dict) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]


def test_every_node_keeps_serves_proxy_in_front_with_the_throughput_mode_behind_it():
    """The Service KubeRay makes for Serve targets the proxy's port; a replica's own port moves on restart."""
    service = rayservice.manifest_for("simple_nn", "0" * 64, "/models/simple_nn.mar", replicas="2")
    for template in _templates(service):
        for container in template["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["http_options"]["port"] == rayservice.SERVE_PORT


@pytest.mark.parametrize("replicas", ["2", "auto"])
def test_every_ray_container_is_unprivileged_on_a_read_only_root(replicas):
    service = rayservice.manifest_for("simple_nn", "0" * 64, "/models/simple_nn.mar", replicas=replicas)
    containers = []
    for template in _templates(service):
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            containers.append(container["securityContext"])
            [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]  # Ray's /tmp/ray and the replicas' folders
            assert "emptyDir" in volumes[tmp["name"]] and not tmp.get("readOnly")
            assert not any(m["mountPath"].startswith(rayservice.API_DIR) for m in container["volumeMounts"])
    autoscaler = service["spec"]["rayClusterConfig"].get("autoscalerOptions")
    if replicas == "auto":  # KubeRay adds the autoscaler to the head pod: the same guards, and the API token for it alone
        containers.append(autoscaler["securityContext"])
        mounts = {m["mountPath"]: m["name"] for m in autoscaler["volumeMounts"]}
        head_volumes = {v["name"]: v for v in _templates(service)[0]["spec"]["volumes"]}
        assert "emptyDir" in head_volumes[mounts["/tmp"]] and "projected" in head_volumes[mounts[rayservice.API_DIR]]
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in autoscaler["env"]
    else:
        assert autoscaler is None
    for security in containers:
        assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]} and security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_network_policy_admits_the_serve_port_from_the_namespace_and_ray_ports_from_the_cluster(built):
    _, layout = built
    found = rayservice.objects(rayservice.path_for(layout))
    assert sorted(found) == ["NetworkPolicy", "RayService"]
    policy, serve_config = found["NetworkPolicy"]["spec"], rayservice.read(rayservice.path_for(layout))[1]
    labels = policy["podSelector"]["matchLabels"]
    assert labels and all(labels.items() <= t["metadata"]["labels"].items() for t in _templates(found["RayService"]))
    assert policy["policyTypes"] == ["Ingress"]
    rules = {tuple(p["port"] for p in rule.get("ports", [])): rule["from"] for rule in policy["ingress"]}
    assert rules == {
        (): [{"podSelector": {"matchLabels": labels}}],  # every port, from the cluster's own pods only
        (serve_config["http_options"]["port"],): [{"podSelector": {}}],  # Serve, from this namespace's pods (no namespaceSelector)
        (8265,): [{"namespaceSelector": {}, "podSelector": {"matchLabels": rayservice.OPERATOR_LABELS}}],  # KubeRay submits there
    }
    assert serve_config["http_options"]["request_timeout_s"] == ray_app.HTTP_LIMITS["request_timeout_s"]
