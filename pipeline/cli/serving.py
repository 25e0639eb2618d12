"""The serving commands: serve, stop, token (each on either backend), rayservice."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from pipeline.artifacts.names import VARIANTS
from pipeline.cli.options import model_options, on_option, rel, settings_from
from pipeline.settings import DEFAULT_MODEL


def add_parsers(commands) -> None:
    """serve, stop, token, update, rollback, rayservice: a flat table of parsers and options, which reads best whole."""
    serve = commands.add_parser(
        "serve",
        help="serve the model's archive (TorchServe, or Ray Serve) and wait until it answers",
        description="Serve the model's verified archive (model_store/<model>.mar) on TorchServe, or on Ray Serve with --on ray, "
        "and return once a real request has been answered. An archive older than the model it was built from is refused: "
        "make serve rebuilds what changed first.",
    )
    model_options(serve)
    on_option(serve)
    serve.add_argument(
        "--variant", choices=VARIANTS, help="serve the variant's archive (model_store/<model>-<variant>.mar) instead of fp32"
    )
    serve.add_argument(
        "--replicas",
        default="1",
        help="Ray only: replica count, or 'auto' for autoscaling between --min-replicas and --max-replicas (default: %(default)s)",
    )
    serve.add_argument("--min-replicas", type=int, default=1, help="Ray only, with --replicas auto (default: %(default)s)")
    serve.add_argument("--max-replicas", type=int, default=4, help="Ray only, with --replicas auto (default: %(default)s)")
    serve.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray only: deploy onto this running cluster (default: $RAY_ADDRESS; unset starts a local one on 127.0.0.1)",
    )
    serve.add_argument(
        "--ports",
        choices=["config", "auto"],
        default="config",
        help="ports from the shipped torchserve.properties, or free ones picked at start (default: %(default)s)",
    )
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for READY workers (default: %(default)s)")
    stop = commands.add_parser(
        "stop",
        help="stop the model's server and every process it started",
        description="Stop the model's server and every process it started.",
    )
    model_options(stop)
    on_option(stop)
    token = commands.add_parser(
        "token",
        help="print the running server's token",
        description="Print the running server's inference token (--header: as a header line).",
    )
    model_options(token)
    on_option(token)
    token.add_argument("--kind", choices=["inference", "management"], default="inference", help="which key to print")
    token.add_argument(
        "--header", action="store_true", help="print it as the header line 'Authorization: Bearer <token>', for curl -H @- to read"
    )

    for verb, what in (
        ("update", "move the running server to the model's current verified archive, with no request failing"),
        ("rollback", "move the running server back to the version it served before this one"),
    ):
        versions = commands.add_parser(
            verb,
            help=what,
            description=f"{what[0].upper()}{what[1:]}. The archive is checked as at serve; a refused one changes nothing and the "
            "running version goes on answering. Every answer names its version (X-Model-Version).",
        )
        model_options(versions)
        on_option(versions)
        versions.add_argument(
            "--variant", choices=VARIANTS, help="the variant's archive (model_store/<model>-<variant>.mar), as served with --variant"
        )
        versions.add_argument(
            "--timeout",
            type=float,
            default=120.0,
            help="seconds for the new version to be ready, and the old one to drain (default: %(default)s)",
        )

    kuberay = commands.add_parser(
        "rayservice",
        help="write model_store/<model>.rayservice.yaml: a KubeRay RayService serving the verified archive",
        description="Write a KubeRay RayService for the model's verified archive (the package stage writes one with default values).",
    )
    model_options(kuberay)
    kuberay.add_argument(
        "--archive-url", help="where the replicas fetch the .mar (https:// URL or a path in the pods; default: /models/<model>.mar)"
    )
    kuberay.add_argument("--image", help="a container image with this project installed (pip install 'pipeline[ray]')")
    kuberay.add_argument("--replicas", default="2", help="replica count, or 'auto' (default: %(default)s)")
    kuberay.add_argument("--workers", type=int, default=2, help="worker pods (default: %(default)s)")


def stop_command(args: argparse.Namespace) -> int:
    from pipeline.serving.backends import BACKENDS
    from pipeline.settings import resolve

    settings, backend = settings_from(args), BACKENDS[args.on]
    spec, _ = resolve(settings)
    stopped = backend.stop(settings)
    print(f"stopped the {spec.name} {backend.label} server" if stopped else f"no {spec.name} {backend.label} server was running")
    return 0


def update_command(args: argparse.Namespace) -> int:
    """update and rollback: the running server moved to another version of the model's archive."""
    from pipeline.serving.backends import BACKENDS
    from pipeline.settings import resolve

    settings, backend = settings_from(args), BACKENDS[args.on]
    spec, layout = resolve(settings)
    if args.command == "update":
        refuse_stale(settings, spec, layout)  # never serve an archive older than what it was built from
    started = time.perf_counter()
    move = backend.versions().update if args.command == "update" else backend.versions().rollback
    before, after = move(settings, timeout=args.timeout)
    if before == after:
        print(f"{spec.name} on {backend.label} already serves version {after}: nothing to do")
        return 0
    print(
        f"{spec.name} on {backend.label}: version {before} -> {after} in {time.perf_counter() - started:.1f}s; every answer names it (X-Model-Version)"
    )
    info = backend.load_info(layout)
    if info is not None:
        print(f"  URL      {info.predictions_url}")
    return 0


def rayservice_command(args: argparse.Namespace) -> int:
    from pipeline.artifacts.manifest import Manifest
    from pipeline.artifacts.names import MAR
    from pipeline.serving.ray import rayservice
    from pipeline.settings import resolve

    spec, layout = resolve(settings_from(args))
    Manifest(layout.root, spec.name).verified(MAR, "rayservice")  # the archive the file pins must be the verified one
    path = rayservice.write(layout, archive=args.archive_url, image=args.image, replicas=args.replicas, workers=args.workers)
    print(f"wrote {rel(path)}: a KubeRay RayService for {spec.name}; read its header before kubectl apply -f {rel(path)}")
    return 0


def token_command(args: argparse.Namespace) -> int:
    from pipeline.serving.backends import BACKENDS
    from pipeline.settings import resolve

    spec, layout = resolve(settings_from(args))
    backend = BACKENDS[args.on]
    info = backend.load_info(layout)
    if info is None or not info.key_file.exists():
        others = running(backend, layout.root)
        elsewhere = (
            f"; {backend.label} serves {', '.join(others)} here: pass the --model that server was started with"
            if others
            else f"; start one with {backend.command('serve')}"
        )
        print(f"error: no {spec.name} {backend.label} server is running{elsewhere}", file=sys.stderr)
        return 1
    if args.kind not in backend.keys:
        print(
            f"error: a {backend.label} server has the key(s) {', '.join(repr(k) for k in backend.keys)}, not {args.kind!r}", file=sys.stderr
        )
        return 1
    token = info.token(args.kind)
    print(f"Authorization: Bearer {token}" if args.header else token)
    return 0


def running(backend, root: Path) -> list[str]:
    """The models this backend serves from the project at `root` (those with a server record and a key file)."""
    from pipeline.settings import Layout

    folder = root / "run"
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [name for name in names if (info := backend.load_info(Layout(root, name))) is not None and info.key_file.exists()]


def refuse_stale(settings, spec, layout) -> None:
    """Never serve an archive older than the model it was built from: say what changed and how to rebuild."""
    from pipeline.artifacts.manifest import Manifest
    from pipeline.artifacts.names import archive_key
    from pipeline.errors import PipelineError
    from pipeline.stages.fresh import stale

    manifest = Manifest(layout.root, spec.name, settings.model)
    reason = stale(spec, manifest, archive_key(settings.variant))
    if reason is None:
        return
    rebuild = f"python -m pipeline all --model {manifest.command}"
    if settings.variant:
        rebuild += f" && python -m pipeline variants --model {manifest.command} --{settings.variant}"
    raise PipelineError(
        "serve",
        f"model_store/{layout.served_name(settings.variant)}.mar is older than what it was built from: {reason}",
        f"rebuild what changed ({rebuild}), then serve; make serve MODEL=... does both",
    )


def serve_command(args: argparse.Namespace) -> int:
    from pipeline.artifacts import files
    from pipeline.serving.backends import BACKENDS, ServeOptions
    from pipeline.settings import resolve

    settings, backend = settings_from(args), BACKENDS[args.on]
    spec, layout = resolve(settings)
    refuse_stale(settings, spec, layout)
    started = time.perf_counter()
    options = ServeOptions(
        auto_ports=args.ports == "auto",
        timeout=args.timeout,
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        address=args.address,
    )
    info = backend.start(settings, options)
    print(f"{backend.served_line(info, options)}; answered in {time.perf_counter() - started:.1f}s")
    model_arg = "" if args.model == DEFAULT_MODEL else f" --model {shlex.quote(args.model)}"
    if Path(args.root) != Path("."):  # the printed commands find this project's server
        model_arg += f" --root {shlex.quote(str(args.root))}"
    token_cmd = backend.command("token", rel(sys.executable)) + model_arg
    body = json.dumps(spec.request_example())
    # A large example (an image is megabytes of JSON) is over what a shell takes as one
    # argument: it goes in a file beside the server's logs, sent with --data-binary @file.
    example = Path(info.run_dir) / "example_request.json"
    files.write_text(example, body)
    data = f"-d {shlex.quote(body)}" if len(body) <= 4096 else f"--data-binary @{shlex.quote(rel(example))}"
    print(f"  URL      {info.predictions_url}")
    print(f'  token    {rel(info.key_file)} ("inference" key); print it with: {token_cmd}')
    # The token goes to curl on its stdin (-H @-): in curl's arguments, every local user would see it in ps.
    if spec.image_input is not None:  # an image file, as it is: the worker decodes it
        print(f"  try      {token_cmd} --header | curl -s -H @- -T <your.jpg or .png> {info.predictions_url}")
    else:
        print(f"  try      {token_cmd} --header | curl -s -H @- -H 'Content-Type: application/json' {data} {info.predictions_url}")
    if spec.generation is None:  # a decoder takes prompts, not the tensors of its graph
        print(f"  OIP v2   {info.inference}/v2/models/{info.model} (metadata) and {info.infer_url}, same token")
    else:
        chat = ", /chat/completions" if spec.generation.chat_template else ""
        stream = json.dumps({"model": info.model, "prompt": "Once upon a time", "max_tokens": 32, "stream": True})
        print(f"  OpenAI   {info.inference}/v1 (/completions{chat}, /models), the same token as the api_key")
        print(
            f"  stream   {token_cmd} --header | curl -sN -H @- -H 'Content-Type: application/json' -d {shlex.quote(stream)} {info.inference}/v1/completions"
        )
        print(
            f"  python   openai.OpenAI(base_url={info.inference + '/v1'!r}, api_key=TOKEN).completions.create("
            f"model={info.model!r}, prompt='Once upon a time', max_tokens=32, stream=True)"
        )
    print(f"  metrics  {info.metrics_url} (Prometheus text; the same token, as a bearer token)")
    print(f"  update   {backend.command('update', rel(sys.executable))}{model_arg} (after rebuilding; rollback goes back)")
    print(f"  logs     {rel(Path(info.run_dir) / 'logs')}/")
    print(f"  stop     {backend.command('stop', rel(sys.executable))}{model_arg}")
    return 0
