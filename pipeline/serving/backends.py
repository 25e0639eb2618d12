"""The serving backends behind one interface: start, stop, find the running server, describe it.

`python -m pipeline serve|stop|token|update|rollback --on NAME` looks NAME up in `BACKENDS` and calls it; the
command line never asks which backend it holds. A backend's module is imported when it is
first used, since Ray Serve is an optional dependency.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol, cast

from pipeline.serving.common.client import Endpoint
from pipeline.settings import Layout, Settings


@dataclass(frozen=True)
class ServeOptions:
    """How to serve, whichever the backend; each reads what applies to it."""

    auto_ports: bool = False
    timeout: float = 120.0
    replicas: str = "1"  # Ray: a count, or "auto" between min_replicas and max_replicas
    min_replicas: int | None = None
    max_replicas: int | None = None
    address: str | None = None  # Ray: a running cluster to deploy to, instead of a local one


class ServerModule(Protocol):
    """What each backend's server module defines."""

    def serve(self, settings: Settings, options: ServeOptions) -> Endpoint: ...
    def stop(self, settings: Settings) -> bool: ...
    def load_info(self, layout: Layout) -> Endpoint | None: ...
    def served_line(self, info: Endpoint, options: ServeOptions) -> str: ...


class VersionsModule(Protocol):
    """What each backend's module for versions defines: (version before, version after)."""

    def update(self, settings: Settings, timeout: float = 120.0) -> tuple[str, str]: ...
    def rollback(self, settings: Settings, timeout: float = 120.0) -> tuple[str, str]: ...


@dataclass(frozen=True)
class Backend:
    name: str  # the --on choice
    label: str  # for people: "TorchServe"
    module: str  # its ServerModule
    keys: tuple[str, ...]  # the tokens its key file holds, the first for inference
    versions_module: str  # its VersionsModule: update and rollback

    def server(self) -> ServerModule:
        return cast(ServerModule, importlib.import_module(self.module))

    def versions(self) -> VersionsModule:
        return cast(VersionsModule, importlib.import_module(self.versions_module))

    def command(self, verb: str, python: str = "python") -> str:
        """The command line that does `verb` (serve, stop, token) on this backend."""
        return f"{python} -m pipeline {verb}" + ("" if self.name == DEFAULT else f" --on {self.name}")

    def start(self, settings: Settings, options: ServeOptions) -> Endpoint:
        return self.server().serve(settings, options)

    def stop(self, settings: Settings) -> bool:
        return self.server().stop(settings)

    def load_info(self, layout: Layout) -> Endpoint | None:
        return self.server().load_info(layout)

    def served_line(self, info: Endpoint, options: ServeOptions) -> str:
        """One line: what serves the model now, and how."""
        return self.server().served_line(info, options)


DEFAULT = "torchserve"
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "torchserve",
            "TorchServe",
            "pipeline.serving.torchserve.server",
            ("inference", "management"),
            "pipeline.serving.torchserve.update",
        ),
        Backend("ray", "Ray Serve", "pipeline.serving.ray.server", ("inference",), "pipeline.serving.ray.server"),
    )
}
