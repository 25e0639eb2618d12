"""A KubeRay `RayService` manifest that runs the Ray application on a real cluster.

Written next to the archive, `model_store/<model>.rayservice.yaml`, by the package stage
(with the archive at /models/<model>.mar inside the pods) and by
`python -m pipeline rayservice --archive-url URL` (fetched from where you put it). Its
Serve config names the application's real entry point and options
(`pipeline.serving.ray.app:build`, `RayAppOptions`) and the archive's SHA-256 from the
manifest, so a replica refuses any other archive. A test loads the file and checks both
against the code, so it cannot drift.

Beside it, in the same file, a NetworkPolicy: the Serve port admits the namespace's pods,
Ray's ports only the cluster's own pods, the dashboard only the KubeRay operator. Every
Ray container runs unprivileged on a read-only root filesystem (Ray writes to an
emptyDir at /tmp) and no pod mounts a Kubernetes API token, except the autoscaler's
container when replicas autoscale.

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
from pipeline.serving.ray.app import ENTRY_POINT, HTTP_LIMITS, QUIET, RayAppOptions, http_limits
from pipeline.settings import Layout

RAY_VERSION = "2.60.0"  # the ray pinned in constraints.txt; the cluster's image must run the same
TOKEN_DIR = "/etc/pipeline/token"
KEY_FILE = "key_file.json"
SERVE_PORT = 8000


def path_for(layout: Layout) -> Path:
    return layout.model_store / f"{layout.model}.rayservice.yaml"


def _dns_name(model: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")[:40] or "model"


# Every Ray container, and the autoscaler beside the head when there is one: no way to gain
# privileges, no capabilities, the runtime's seccomp filter, and an image nobody can change.
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
    "readOnlyRootFilesystem": True,
}
# What Ray writes: /tmp/ray (sessions, sockets, logs, spilled objects) and the replicas'
# temporary archive folders, all under /tmp.
TMP_VOLUME = {"name": "tmp", "emptyDir": {}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
# The token Kubernetes would mount into every container, for the autoscaler only: it scales
# the worker pods through the Kubernetes API, and the Ray containers have no use for it.
API_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
API_VOLUME = {
    "name": "kube-api-access",
    "projected": {
        "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]
    },
}
# The labels the KubeRay Helm chart gives the operator's pods; it submits the Serve config to the dashboard.
OPERATOR_LABELS = {"app.kubernetes.io/component": "kuberay-operator"}
DASHBOARD_PORT = 8265


def pod_labels(model: str) -> dict[str, str]:
    """The labels on every pod of the model's Ray cluster, which its NetworkPolicy selects."""
    return {"app.kubernetes.io/name": _dns_name(model), "app.kubernetes.io/component": "ray"}


def _serve_config(model: str, args: dict[str, Any], limits: dict[str, float]) -> dict[str, Any]:
    return {
        "proxy_location": "EveryNode",
        # Inside the pod network; the NetworkPolicy decides who reaches it.
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT, **limits},
        "logging_config": QUIET,
        "applications": [{"name": model, "route_prefix": "/", "import_path": ENTRY_POINT, "args": args}],
    }


def _env(name: str) -> list[dict]:
    return [
        # Ray's own control plane requires its token on every connection.
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"{name}-ray-auth", "key": "token"}}},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        # Serve's proxy stays the entry: the Service KubeRay makes for Serve targets it on port 8000,
        # and a replica's own direct-ingress port moves when the replica restarts. What the
        # throughput mode adds behind it (gRPC from the proxy to the replicas, the application on the
        # replica's own loop, the GC frozen after start) applies.
        {"name": "RAY_SERVE_THROUGHPUT_OPTIMIZED", "value": "1"},
        {"name": "RAY_SERVE_ENABLE_DIRECT_INGRESS", "value": "0"},
    ]


def _pod(model: str, image: str, archive: str, container: str, ports: list[dict], *, api: bool = False) -> dict:
    """A Ray pod: its container with the token and /tmp mounted, the archive's volume where it is a path."""
    name = _dns_name(model)
    # Owner and group read only (0440); fsGroup makes the pod's user the group, and the
    # application refuses a key file that other users can read.
    volumes = [{"name": "token", "secret": {"secretName": f"{name}-token", "defaultMode": 0o440}}, TMP_VOLUME]
    mounts = [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}, TMP_MOUNT]
    if not archive.startswith(("http://", "https://", "file://")):
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": f"{name}-models", "readOnly": True}})
        mounts.append({"name": "models", "mountPath": str(Path(archive).parent), "readOnly": True})
    if api:
        volumes.append(API_VOLUME)
    return {
        "metadata": {"labels": pod_labels(model)},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            "containers": [
                {
                    "name": container,
                    "image": image,
                    "env": _env(name),
                    "ports": ports,
                    "volumeMounts": mounts,
                    "securityContext": CONTAINER_SECURITY,
                    "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
                }
            ],
            "volumes": volumes,
        },
    }


def manifest_for(
    model: str,
    sha256: str,
    archive: str,
    image: str = "REPLACE-ME/pipeline-ray:latest",
    replicas: str = "2",
    workers: int = 2,
    limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The RayService object for `model`'s archive (verified by `sha256`) at `archive`; `limits`: Serve's
    http_options limits for it (`app.http_limits`), HTTP_LIMITS by default."""
    name = _dns_name(model)
    count: int | str = int(replicas) if replicas.isdigit() else replicas
    args: dict[str, Any] = {"archive": archive, "sha256": sha256, "token_file": f"{TOKEN_DIR}/{KEY_FILE}", "replicas": count}
    if replicas == "auto":
        args.update(min_replicas=1, max_replicas=2 * workers)
    RayAppOptions.from_args(args)  # the same checks a replica makes
    autoscaling = replicas == "auto"
    head_ports = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": DASHBOARD_PORT, "name": "dashboard"},
        {"containerPort": SERVE_PORT, "name": "serve"},
    ]
    cluster: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": autoscaling,
        "headGroupSpec": {
            # The head runs the controller and a proxy, never a replica.
            # KubeRay submits the Serve config through the dashboard, so it listens
            # on the pod network; RAY_AUTH_MODE=token and the NetworkPolicy guard it.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _pod(model, image, archive, "ray-head", head_ports, api=autoscaling),
        },
        "workerGroupSpecs": [
            {
                "groupName": "cpu",
                "replicas": workers,
                "minReplicas": 1,
                "maxReplicas": 2 * workers,
                "rayStartParams": {},
                "template": _pod(model, image, archive, "ray-worker", [{"containerPort": SERVE_PORT, "name": "serve"}]),
            }
        ],
    }
    if autoscaling:  # the autoscaler container KubeRay adds to the head pod: the same guards, Ray's token, the API token
        cluster["autoscalerOptions"] = {
            "securityContext": CONTAINER_SECURITY,
            "env": _env(name),
            "volumeMounts": [TMP_MOUNT, {"name": API_VOLUME["name"], "mountPath": API_DIR, "readOnly": True}],
        }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": f"{name}-serve", "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "serveConfigV2": yaml.safe_dump(_serve_config(model, args, limits or HTTP_LIMITS), sort_keys=False),
            "rayClusterConfig": cluster,
        },
    }


def network_policy_for(model: str) -> dict[str, Any]:
    """Who may reach the model's Ray pods: each other (Ray's own ports), the namespace's pods
    (the Serve port only), and the KubeRay operator (the head's dashboard only)."""
    name = _dns_name(model)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{name}-ray", "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "podSelector": {"matchLabels": pod_labels(model)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": pod_labels(model)}}]},
                {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": SERVE_PORT}]},
                {
                    "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": OPERATOR_LABELS}}],
                    "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}],
                },
            ],
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
# Clients send Authorization: Bearer <token> to /predictions/{model} or /v2/models/{model}/infer on port {port}.
# The NetworkPolicy below admits port {port} from pods in this namespace only, Ray's ports from the cluster's
# own pods (labelled {labels}), and the dashboard from the KubeRay operator
# (pods labelled app.kubernetes.io/component=kuberay-operator, any namespace); a client elsewhere (an
# ingress controller) needs its own `from` entry there.
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
    limits = http_limits(str(layout.mar))  # a generation model's streams may run its request_timeout_s
    service = manifest_for(
        layout.model, rec.sha256, where, **({"image": image} if image else {}), replicas=replicas, workers=workers, limits=limits
    )
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
        labels=",".join(f"{k}={v}" for k, v in pod_labels(layout.model).items()),
    )
    path = path_for(layout)
    documents = [service, network_policy_for(layout.model)]
    files.write_text(path, header + yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120))
    return path


def objects(path: Path) -> dict[str, dict]:
    """The generated file's objects by kind: RayService and NetworkPolicy."""
    return {document["kind"]: document for document in yaml.safe_load_all(path.read_text())}


def read(path: Path) -> tuple[dict, dict]:
    """(the RayService object, its parsed Serve config) from a generated file."""
    document = objects(path)["RayService"]
    return document, yaml.safe_load(document["spec"]["serveConfigV2"])
