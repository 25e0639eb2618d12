"""A KubeRay `RayService` manifest that runs the Ray application on a real cluster.

Written next to the archive, `model_store/<model>.rayservice.yaml`, by the package stage
(with the archive at /models/<model>.mar inside the pods) and by
`python -m pipeline rayservice --archive-url URL` (fetched from where you put it). Its
Serve config names the application's real entry point and options
(`pipeline.serving.ray_app:build`, `RayAppOptions`) and the archive's SHA-256 from the
manifest, so a replica refuses any other archive. A test loads the file and checks both
against the code, so it cannot drift.

What it leaves to you (the file says so at the top): an image with this project
installed (`pip install 'pipeline[ray]'`), the Secret holding the bearer token, and, if
the archive is a path, a volume that holds it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.artifacts import files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import MAR
from pipeline.serving.ray_app import ENTRY_POINT, QUIET, RayAppOptions
from pipeline.settings import Layout

RAY_VERSION = "2.60.0"  # the ray pinned in constraints.txt; the cluster's image must run the same
TOKEN_DIR = "/etc/pipeline/token"
KEY_FILE = "key_file.json"
SERVE_PORT = 8000


def path_for(layout: Layout) -> Path:
    return layout.model_store / f"{layout.model}.rayservice.yaml"


def _dns_name(model: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")[:40] or "model"


def manifest_for(
    model: str, sha256: str, archive: str, image: str = "REPLACE-ME/pipeline-ray:latest", replicas: str = "2", workers: int = 2
) -> dict[str, Any]:
    """The RayService object for `model`'s archive (verified by `sha256`) at `archive`."""
    name = _dns_name(model)
    count: int | str = int(replicas) if replicas.isdigit() else replicas
    args: dict[str, Any] = {"archive": archive, "sha256": sha256, "token_file": f"{TOKEN_DIR}/{KEY_FILE}", "replicas": count}
    if replicas == "auto":
        args.update(min_replicas=1, max_replicas=2 * workers)
    RayAppOptions.from_args(args)  # the same checks a replica makes
    serve_config = {
        "proxy_location": "EveryNode",
        # Inside the pod network; a Kubernetes Service in front decides who reaches it.
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "logging_config": QUIET,
        "applications": [{"name": model, "route_prefix": "/", "import_path": ENTRY_POINT, "args": args}],
    }
    # Owner and group read only (0440); fsGroup makes the pod's user the group, and the
    # application refuses a key file that other users can read.
    token_volume = {"name": "token", "secret": {"secretName": f"{name}-token", "defaultMode": 0o440}}
    mounts = [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}]
    if not archive.startswith(("http://", "https://", "file://")):
        mounts.append({"name": "models", "mountPath": str(Path(archive).parent), "readOnly": True})
    env = [
        # Ray's own control plane requires its token on every connection.
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"{name}-ray-auth", "key": "token"}}},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]

    def pod(container: str, ports: list[dict]) -> dict:
        volumes = [token_volume]
        if len(mounts) > 1:
            volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": f"{name}-models", "readOnly": True}})
        return {
            "spec": {
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
                "containers": [
                    {
                        "name": container,
                        "image": image,
                        "env": env,
                        "ports": ports,
                        "volumeMounts": mounts,
                        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
                    }
                ],
                "volumes": volumes,
            }
        }

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": f"{name}-serve", "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": replicas == "auto",
                "headGroupSpec": {
                    # The head runs the controller and a proxy, never a replica.
                    # KubeRay submits the Serve config through the dashboard, so it listens
                    # on the pod network; RAY_AUTH_MODE=token guards it.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": pod(
                        "ray-head",
                        [
                            {"containerPort": 6379, "name": "gcs"},
                            {"containerPort": 8265, "name": "dashboard"},
                            {"containerPort": SERVE_PORT, "name": "serve"},
                        ],
                    ),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu",
                        "replicas": workers,
                        "minReplicas": 1,
                        "maxReplicas": 2 * workers,
                        "rayStartParams": {},
                        "template": pod("ray-worker", [{"containerPort": SERVE_PORT, "name": "serve"}]),
                    }
                ],
            },
        },
    }


HEADER = """\
# KubeRay RayService: {model} on Ray Serve, from the archive `make export` verified
# (SHA-256 {sha256}). Written by the package stage (make export) and by
# `python -m pipeline rayservice --archive-url URL`; regenerate it rather than edit it.
# Before `kubectl apply -f` this file:
#   - build an image with this project installed (pip install 'pipeline[ray]', ray {ray}) and set `image:`;
#   - create the bearer token and Ray's control-plane token as Secrets:
#       kubectl create secret generic {name}-token --from-file={key_file}=<file with {{"inference": {{"key": "<token>"}}}}>
#       kubectl create secret generic {name}-ray-auth --from-literal=token=$(openssl rand -hex 32)
#   - {archive_note}
# Clients send Authorization: Bearer <token> to /predictions/{model} or /v2/models/{model}/infer on port {port};
# put a Service (and a NetworkPolicy) in front of port {port} to choose who reaches it.
"""


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no &anchors for repeated parts, multi-line strings as | blocks."""

    def ignore_aliases(self, data) -> bool:
        return True


def _block(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _block)


def write(layout: Layout, archive: str | None = None, image: str | None = None, replicas: str = "2", workers: int = 2) -> Path:
    """Write model_store/<model>.rayservice.yaml for the verified archive; return its path."""
    manifest = Manifest(layout.root, layout.model)
    rec = manifest.records[MAR]
    where = archive or f"/models/{layout.mar.name}"
    document = manifest_for(layout.model, rec.sha256, where, **({"image": image} if image else {}), replicas=replicas, workers=workers)
    note = (
        f"the replicas fetch the archive from {where}; it must be the file with the hash above"
        if archive and archive.startswith(("http://", "https://"))
        else f"the PersistentVolumeClaim {_dns_name(layout.model)}-models must hold {where} (copy model_store/{layout.mar.name} there)"
    )
    header = HEADER.format(
        model=layout.model,
        sha256=rec.sha256,
        name=_dns_name(layout.model),
        key_file=KEY_FILE,
        ray=RAY_VERSION,
        archive_note=note,
        port=SERVE_PORT,
    )
    path = path_for(layout)
    files.write_text(path, header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120))
    return path


def read(path: Path) -> tuple[dict, dict]:
    """(the RayService object, its parsed Serve config) from a generated file."""
    document = yaml.safe_load(path.read_text())
    return document, yaml.safe_load(document["spec"]["serveConfigV2"])
