"""Command line: `python -m pipeline <command> [options]`; `python -m pipeline <command> --help`.

Stages: train, trace, export, parity, package; `all` runs them in order and prints a
one-screen summary. serve / stop / token run the TorchServe endpoint; bench writes the
latency report; reliability runs the fault harness. Each command takes only its own options.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from pipeline.artifacts import cost
from pipeline.artifacts.names import VARIANTS
from pipeline.errors import PipelineError
from pipeline.settings import DEFAULT_MODEL, PARITY_BATCH_SIZES, Settings, StageResult
from pipeline.spec import HF_PREFIX, HF_TASKS, hf_model

STAGE_NAMES = ("train", "trace", "export", "parity", "package")
STAGE_HELP = {
    "train": "fit the model (or load its weights) and write the checkpoint",
    "trace": "trace the model to TorchScript and check the trace",
    "export": "export the model to ONNX with its dynamic axes",
    "parity": "the gate: TorchScript and ONNX Runtime against eager PyTorch",
    "package": "build model_store/<model>.mar from the verified ONNX file",
    "all": "every stage in order, skipping what is up to date",
    "variants": "int8 (CPU) and fp16 (CUDA) variants of the verified model: built, gated by parity and the task metric, packaged",
}


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive integers, e.g. 1,2,7,64")
    return sizes


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="built-in model name, path to a .py file defining SPEC, or hf:PATH, a save_pretrained folder (default: %(default)s)",
    )
    _task_option(p)
    p.add_argument("--root", type=Path, default=Path("."), help="project folder holding artifacts/, reports/, model_store/ (default: .)")


def _task_option(p: argparse.ArgumentParser) -> None:
    # It travels inside the model string (hf:PATH#task=TASK), so every command and every process it starts sees it.
    p.add_argument("--task", choices=HF_TASKS, help="with --model hf:PATH: the task (default: the one config.json's architectures say)")


def _stage_options(p: argparse.ArgumentParser, name: str) -> None:
    _model_options(p)
    p.add_argument("--force", action="store_true", help="redo the stage(s) even when inputs and settings are unchanged")
    if name in ("train", "all"):
        p.add_argument("--seed", type=int, default=0, help="seed for training and sample inputs (default: 0)")
    if name in ("export", "all"):
        p.add_argument(
            "--exporter-fallback",
            action="store_true",
            help="where the torch.export-based ONNX exporter fails, use the TorchScript-based one "
            "(recorded in the manifest, checked by the same parity gate)",
        )
    if name in ("parity", "package", "all"):
        p.add_argument(
            "--cuda-precision",
            choices=["fp32", "tf32"],
            help="CUDA precision to verify and serve: fp32 (exact, ONNX Runtime's TF32 off) or tf32 "
            "(needs the spec's tf32_tolerance) (default: the model's, fp32 unless it says tf32)",
        )
    if name in ("package", "all"):
        _archive_options(p)
    if name in ("parity", "all"):
        p.add_argument("--atol", type=float, help="parity absolute tolerance (default: the model's)")
        p.add_argument("--rtol", type=float, help="parity relative tolerance (default: the model's)")
        p.add_argument(
            "--scaled", type=float, help="parity tolerance as a fraction of each output's scale, its largest |value| (default: the model's)"
        )
        p.add_argument(
            "--parity-batch-sizes", type=_batch_sizes, default=PARITY_BATCH_SIZES, help="batch sizes parity checks (default: %(default)s)"
        )
        p.add_argument(
            "--parity-sweep",
            choices=["sized", "full"],
            default=Settings.parity_sweep,
            help="sized: batches over 7 run only where the model's measured cost fits the budget; full: every batch size asked for "
            "(default: %(default)s)",
        )
        p.add_argument(
            "--parity-budget-s",
            type=float,
            default=Settings.parity_budget_s,
            help="seconds the sized sweep may spend on every engine together (default: %(default)s)",
        )
        p.add_argument(
            "--parity-budget-mb",
            type=float,
            default=Settings.parity_budget_mb,
            help="memory one case may take above the loaded model, in MiB (default: %(default)s)",
        )


def _archive_options(p: argparse.ArgumentParser) -> None:
    """The TorchServe model config an archive carries (package, all, variants)."""
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=Settings.serve_batch_size,
        help="TorchServe batches requests up to this size (default: %(default)s; 1 turns batching off)",
    )
    p.add_argument(
        "--max-batch-delay-ms",
        type=_positive,
        default=Settings.serve_max_batch_delay_ms,
        help="how long TorchServe waits to fill a batch, in whole ms; it always waits this long for a second "
        "request, and 0 would mean its 100 ms default (default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=_positive, default=Settings.serve_workers, help="TorchServe workers for the model (default: %(default)s)"
    )


def _on_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on",
        choices=["torchserve", "ray"],
        default="torchserve",
        help="the single TorchServe endpoint, or the same archive on Ray Serve (default: %(default)s)",
    )


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line and each command's own parser."""
    from pipeline.bench import latency
    from pipeline.reliability import suite

    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True, metavar="command")
    for name in (*STAGE_NAMES, "all"):
        _stage_options(commands.add_parser(name, help=STAGE_HELP[name], description=STAGE_HELP[name]), name)

    variants = commands.add_parser("variants", help=STAGE_HELP["variants"], description=STAGE_HELP["variants"])
    _model_options(variants)
    variants.add_argument("--int8", action="store_true", help="the int8 variant, for the CPU")
    variants.add_argument("--fp16", action="store_true", help="the fp16 variant, for CUDA (its gate needs a GPU)")
    variants.add_argument("--force", action="store_true", help="rebuild and re-gate even when inputs and settings are unchanged")
    variants.add_argument("--seed", type=int, default=0, help="seed for the calibration and parity inputs (default: 0)")
    variants.add_argument(
        "--parity-batch-sizes", type=_batch_sizes, default=PARITY_BATCH_SIZES, help="batch sizes the gate checks (default: %(default)s)"
    )
    _archive_options(variants)

    serve = commands.add_parser("serve", help="serve the model's archive (TorchServe, or Ray Serve) and wait until it answers")
    _model_options(serve)
    _on_option(serve)
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
    stop = commands.add_parser("stop", help="stop the model's server and every process it started")
    _model_options(stop)
    _on_option(stop)
    token = commands.add_parser("token", help="print the running server's token")
    _model_options(token)
    _on_option(token)
    token.add_argument("--kind", choices=["inference", "management"], default="inference", help="which key to print")
    token.add_argument(
        "--header", action="store_true", help="print it as the header line 'Authorization: Bearer <token>', for curl -H @- to read"
    )

    kuberay = commands.add_parser(
        "rayservice",
        help="write model_store/<model>.rayservice.yaml: a KubeRay RayService serving the verified archive",
        description="Write a KubeRay RayService for the model's verified archive (the package stage writes one with default values).",
    )
    _model_options(kuberay)
    kuberay.add_argument(
        "--archive-url", help="where the replicas fetch the .mar (https:// URL or a path in the pods; default: /models/<model>.mar)"
    )
    kuberay.add_argument("--image", help="a container image with this project installed (pip install 'pipeline[ray]')")
    kuberay.add_argument("--replicas", default="2", help="replica count, or 'auto' (default: %(default)s)")
    kuberay.add_argument("--workers", type=int, default=2, help="worker pods (default: %(default)s)")

    bench = commands.add_parser(
        "bench",
        help="latency report: eager vs TorchScript vs ONNX Runtime, and the served endpoint",
        description=latency.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    latency.add_arguments(bench)
    _task_option(bench)
    reliability = commands.add_parser(
        "reliability",
        help="faults, hostile input and load -> reports/reliability.md",
        description=suite.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    suite.add_arguments(reliability)
    _task_option(reliability)
    return p, commands.choices


def _line(result: StageResult, peak_mb: float | None = None) -> str:
    mark = "·" if result.skipped else "✓"
    verb = "skipped" if result.skipped else f"ran in {result.seconds:.1f}s"
    peak = f"peak {peak_mb / 1024:.1f} GiB" if peak_mb is not None and not result.skipped else ""
    return f"  {mark} {result.stage:<8} {verb:<14} {peak:<15} {result.summary}"


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse; an option the command does not take exits 2 with that command's own usage."""
    p, commands = parser()
    args, extra = p.parse_known_args(argv)
    if extra:
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "task", None) is not None:
        if not args.model.startswith(HF_PREFIX):
            commands[args.command].error(f"--task is for a Hugging Face checkpoint (--model {HF_PREFIX}PATH), not {args.model!r}")
        args.model = hf_model(args.model, args.task)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": serve_command,
        "stop": stop_command,
        "token": token_command,
        "rayservice": rayservice_command,
        "variants": variants_command,
        "bench": _bench,
        "reliability": _reliability,
    }
    try:
        if args.command in commands:
            return commands[args.command](args)
        return stages_command(args)
    except PipelineError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; finished artifacts are kept, unfinished ones were not written", file=sys.stderr)
        return 130


def _bench(args: argparse.Namespace) -> int:
    from pipeline.bench import latency

    return latency.main(args)


def _reliability(args: argparse.Namespace) -> int:
    from pipeline.reliability import suite

    return suite.main(args)


def settings_from(args: argparse.Namespace) -> Settings:
    """The run's settings from whichever of them this command takes."""
    return Settings(
        model=args.model,
        root=args.root,
        force=getattr(args, "force", False),
        seed=getattr(args, "seed", 0),
        atol=getattr(args, "atol", None),
        rtol=getattr(args, "rtol", None),
        parity_batch_sizes=getattr(args, "parity_batch_sizes", PARITY_BATCH_SIZES),
        scaled=getattr(args, "scaled", None),
        parity_sweep=getattr(args, "parity_sweep", Settings.parity_sweep),
        parity_budget_s=getattr(args, "parity_budget_s", Settings.parity_budget_s),
        parity_budget_mb=getattr(args, "parity_budget_mb", Settings.parity_budget_mb),
        cuda_precision=getattr(args, "cuda_precision", None),
        exporter_fallback=getattr(args, "exporter_fallback", False),
        serve_batch_size=getattr(args, "batch_size", Settings.serve_batch_size),
        serve_max_batch_delay_ms=getattr(args, "max_batch_delay_ms", Settings.serve_max_batch_delay_ms),
        serve_workers=getattr(args, "workers", Settings.serve_workers),
        variant=getattr(args, "variant", None),
    )


def variants_command(args: argparse.Namespace) -> int:
    from pipeline.stages import variants

    wanted = tuple(v for v in VARIANTS if getattr(args, v))
    if not wanted:
        print("error: name at least one variant: --int8 and/or --fp16", file=sys.stderr)
        return 2
    cost.start()
    for result in variants.run(settings_from(args), wanted):
        print(_line(result, cost.peak_mb()), flush=True)
    return 0


def stages_command(args: argparse.Namespace) -> int:
    from pipeline.stages import STAGES

    settings = settings_from(args)
    names = list(STAGES) if args.command == "all" else [args.command]
    start = time.perf_counter()
    results: list[StageResult] = []
    for name in names:
        cost.start()
        with ticking(name):
            result = STAGES[name](settings)
        results.append(result)
        print(_line(result, cost.peak_mb()), flush=True)
        gc.collect()  # a traced module keeps its model in a reference cycle: 2.3 GB of a 2.4 GB model until collected
    if args.command == "all":
        print(summary(results, settings, time.perf_counter() - start))
    return 0


@contextlib.contextmanager
def ticking(stage: str) -> Iterator[None]:
    """On a terminal, the running stage and its elapsed time: a large model's export takes minutes."""
    bar = tqdm(desc=f"  … {stage}", bar_format="{desc} {elapsed}", disable=None, leave=False)
    if bar.disable:
        yield
        return
    done = threading.Event()

    def tick() -> None:
        while not done.wait(1.0):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        bar.close()


def stop_command(args: argparse.Namespace) -> int:
    from pipeline.serving.backends import BACKENDS
    from pipeline.settings import resolve

    settings, backend = settings_from(args), BACKENDS[args.on]
    spec, _ = resolve(settings)
    stopped = backend.stop(settings)
    print(f"stopped the {spec.name} {backend.label} server" if stopped else f"no {spec.name} {backend.label} server was running")
    return 0


def rayservice_command(args: argparse.Namespace) -> int:
    from pipeline.artifacts.manifest import Manifest
    from pipeline.artifacts.names import MAR
    from pipeline.serving.ray import rayservice
    from pipeline.settings import resolve

    spec, layout = resolve(settings_from(args))
    Manifest(layout.root, spec.name).verified(MAR, "rayservice")  # the archive the file pins must be the verified one
    path = rayservice.write(layout, archive=args.archive_url, image=args.image, replicas=args.replicas, workers=args.workers)
    print(f"wrote {_rel(path)}: a KubeRay RayService for {spec.name}; read its header before kubectl apply -f {_rel(path)}")
    return 0


def token_command(args: argparse.Namespace) -> int:
    from pipeline.serving.backends import BACKENDS
    from pipeline.settings import resolve

    spec, layout = resolve(settings_from(args))
    backend = BACKENDS[args.on]
    info = backend.load_info(layout)
    if info is None or not info.key_file.exists():
        print(f"error: no {spec.name} {backend.label} server is running; start one with {backend.command('serve')}", file=sys.stderr)
        return 1
    if args.kind not in backend.keys:
        print(
            f"error: a {backend.label} server has the key(s) {', '.join(repr(k) for k in backend.keys)}, not {args.kind!r}", file=sys.stderr
        )
        return 1
    token = info.token(args.kind)
    print(f"Authorization: Bearer {token}" if args.header else token)
    return 0


def serve_command(args: argparse.Namespace) -> int:
    from pipeline.artifacts import files
    from pipeline.serving.backends import BACKENDS, ServeOptions
    from pipeline.settings import resolve

    settings, backend = settings_from(args), BACKENDS[args.on]
    spec, _ = resolve(settings)
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
    token_cmd = backend.command("token", _rel(sys.executable)) + model_arg
    body = json.dumps(spec.request_example())
    # A large example (an image is megabytes of JSON) is over what a shell takes as one
    # argument: it goes in a file beside the server's logs, sent with --data-binary @file.
    example = Path(info.run_dir) / "example_request.json"
    files.write_text(example, body)
    data = f"-d {shlex.quote(body)}" if len(body) <= 4096 else f"--data-binary @{shlex.quote(_rel(example))}"
    print(f"  URL      {info.predictions_url}")
    print(f'  token    {_rel(info.key_file)} ("inference" key); print it with: {token_cmd}')
    # The token goes to curl on its stdin (-H @-): in curl's arguments, every local user would see it in ps.
    if spec.image_input is not None:  # an image file, as it is: the worker decodes it
        print(f"  try      {token_cmd} --header | curl -s -H @- -T <your.jpg or .png> {info.predictions_url}")
    else:
        print(f"  try      {token_cmd} --header | curl -s -H @- -H 'Content-Type: application/json' {data} {info.predictions_url}")
    print(f"  OIP v2   {info.inference}/v2/models/{info.model} (metadata) and {info.infer_url}, same token")
    print(f"  logs     {_rel(Path(info.run_dir) / 'logs')}/")
    print(f"  stop     {backend.command('stop', _rel(sys.executable))}{model_arg}")
    return 0


def _rel(path) -> str:
    return os.path.relpath(path, Path.cwd())


def summary(results: list[StageResult], settings: Settings, seconds: float) -> str:
    from pipeline.artifacts.manifest import Manifest
    from pipeline.artifacts.names import KEYS, MAR, PARITY
    from pipeline.settings import resolve

    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name)
    ran = [r.stage for r in results if not r.skipped]
    skipped = [r.stage for r in results if r.skipped]
    parity = manifest.records[PARITY]
    worst = parity.details["worst"]
    tol = parity.settings
    mar = manifest.records[MAR]
    stages = [manifest.records[key] for key in KEYS if key in manifest.records]
    lines = [
        "",
        f"{spec.name}: done in {seconds:.1f}s — ran {len(ran)} stage(s){': ' + ', '.join(ran) if ran else ''}"
        f"{'; skipped (up to date) ' + ', '.join(skipped) if skipped else ''}",
        f"  parity   PASS; worst {worst['engine']} '{worst['output']}' at {worst['case']}: max abs {worst['max_abs']:.3g} "
        f"({worst.get('max_scaled', 0):.2g} of its scale), max rel {worst['max_rel']:.3g} vs atol {tol['atol']:g} + rtol {tol['rtol']:g}·|want| "
        f"+ scaled {tol.get('scaled', 0):g}·scale ({worst['tolerance_used']:.2g}× the bound)",
        f"  sweep    batch sizes {parity.details.get('batch_sizes', tol['batch_sizes'])}"
        + (
            f"; left out {', '.join(parity.details['left_out'])} (over the budget, see parity.md)" if parity.details.get("left_out") else ""
        ),
    ]
    for v in parity.details.get("vacuous", []):
        lines.append(f"  WARNING  output '{v['output']}' proves nothing: {v['why']}")
    lines += [
        f"  archive  {mar.path} ({mar.bytes / 1024:.1f} KiB), CUDA precision {tol.get('cuda_precision', 'fp32')}",
        "  cost     "
        + ", ".join(f"{r.stage} {r.seconds:.1f}s {r.peak_rss_mb / 1024:.1f} GiB" for r in stages)
        + " (as recorded: time, peak memory)",
        f"  reports  {layout.reports.relative_to(layout.root)}/parity.md, manifest {manifest.path.relative_to(layout.root)}",
    ]
    if skipped and not ran:
        lines.append("  nothing changed; use --force (make export FORCE=1) to redo every stage")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
