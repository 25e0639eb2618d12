"""Command line: `python -m pipeline <stage> [--model NAME|PATH] [--force]`.

Stages: train, trace, export, parity, package; `all` runs them in order and prints
a one-screen summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import export, package, parity, trace, train
from .errors import PipelineError
from .stage import DEFAULT_MODEL, PARITY_BATCH_SIZES, Settings, StageResult

STAGES = {"train": train.run, "trace": trace.run, "export": export.run, "parity": parity.run, "package": package.run}
SERVER_COMMANDS = ("serve", "stop", "token")
# `bench` has options of its own: python -m pipeline bench --help
OWN_PARSER = ("bench",)


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive integers, e.g. 1,2,7,64")
    return sizes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=[*STAGES, "all", *SERVER_COMMANDS, *OWN_PARSER],
                   help="a stage, all of them, serve / stop / token for the TorchServe endpoint, "
                        "or bench for the latency report (see python -m pipeline bench --help)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="built-in model name or path to a .py file defining SPEC (default: %(default)s)")
    p.add_argument("--root", type=Path, default=Path("."), help="project folder holding artifacts/, reports/, model_store/ (default: .)")
    p.add_argument("--force", action="store_true", help="redo the stage(s) even when inputs and settings are unchanged")
    p.add_argument("--seed", type=int, default=0, help="seed for training and sample inputs (default: 0)")
    p.add_argument("--atol", type=float, help="parity absolute tolerance (default: the model's)")
    p.add_argument("--rtol", type=float, help="parity relative tolerance (default: the model's)")
    p.add_argument("--parity-batch-sizes", type=_batch_sizes, default=PARITY_BATCH_SIZES,
                   help="batch sizes parity checks (default: %(default)s)")
    p.add_argument("--ports", choices=["config", "auto"], default="config",
                   help="serve: ports from config/torchserve.properties, or free ones picked at start (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="serve: seconds to wait for READY workers (default: %(default)s)")
    p.add_argument("--kind", choices=["inference", "management"], default="inference", help="token: which key to print")
    return p


def _line(result: StageResult) -> str:
    mark = "·" if result.skipped else "✓"
    verb = "skipped" if result.skipped else f"ran in {result.seconds:.1f}s"
    return f"  {mark} {result.stage:<8} {verb:<14} {result.summary}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from . import bench

        return bench.main(argv[1:])
    args = parser().parse_args(argv)
    settings = Settings(model=args.model, root=args.root, force=args.force, seed=args.seed, atol=args.atol,
                        rtol=args.rtol, parity_batch_sizes=args.parity_batch_sizes)
    if args.stage in SERVER_COMMANDS:
        try:
            return server_command(args, settings)
        except PipelineError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1
    names = list(STAGES) if args.stage == "all" else [args.stage]
    start = time.perf_counter()
    results: list[StageResult] = []
    try:
        for name in names:
            result = STAGES[name](settings)
            results.append(result)
            print(_line(result), flush=True)
    except PipelineError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; finished artifacts are kept, unfinished ones were not written", file=sys.stderr)
        return 130
    if args.stage == "all":
        print(summary(results, settings, time.perf_counter() - start))
    return 0


def server_command(args, settings: Settings) -> int:
    import json
    import shlex

    from . import serve
    from .stage import resolve

    spec, layout = resolve(settings)
    if args.stage == "stop":
        stopped = serve.stop(settings)
        print(f"stopped the {spec.name} server" if stopped else f"no {spec.name} server was running")
        return 0
    if args.stage == "token":
        info = serve.load_info(layout)
        if info is None or not info.key_file.exists():
            print(f"error: no {spec.name} server is running; start one with make serve", file=sys.stderr)
            return 1
        print(info.token(args.kind))
        return 0
    info = serve.start(settings, auto_ports=args.ports == "auto", timeout=args.timeout)
    workers = info.workers()

    def rel(path) -> str:
        return os.path.relpath(path, Path.cwd())

    body = json.dumps(spec.example_request or {})
    model_arg = "" if args.model == DEFAULT_MODEL else f" --model {shlex.quote(args.model)}"
    token_cmd = f"{rel(sys.executable)} -m pipeline token{model_arg}"
    print(f"{spec.name} is served by TorchServe: {len(workers)} worker(s) READY "
          f"(pid {', '.join(str(w['pid']) for w in workers)}; {'GPU' if any(w.get('gpu') for w in workers) else 'CPU'})")
    print(f"  URL      {info.predictions_url}")
    print(f"  token    {rel(info.key_file)} (\"inference\" key); print it with: {token_cmd}")
    print(f"  try      curl -s -H \"Authorization: Bearer $({token_cmd})\" -H 'Content-Type: application/json' "
          f"-d {shlex.quote(body)} {info.predictions_url}")
    print(f"  logs     {rel(Path(info.run_dir) / 'logs')}/")
    print("  stop     make stop" + ("" if args.model == DEFAULT_MODEL else f" MODEL={shlex.quote(args.model)}"))
    return 0


def summary(results: list[StageResult], settings: Settings, seconds: float) -> str:
    from .manifest import Manifest
    from .stage import resolve

    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name)
    ran = [r.stage for r in results if not r.skipped]
    skipped = [r.stage for r in results if r.skipped]
    worst = manifest.records["parity"].details["worst"]
    tol = manifest.records["parity"].settings
    mar = manifest.records["mar"]
    lines = [
        "",
        f"{spec.name}: done in {seconds:.1f}s — ran {len(ran)} stage(s){': ' + ', '.join(ran) if ran else ''}"
        f"{'; skipped (up to date) ' + ', '.join(skipped) if skipped else ''}",
        f"  parity   PASS; worst {worst['engine']} '{worst['output']}' at {worst['case']}: max abs {worst['max_abs']:.3g}, "
        f"max rel {worst['max_rel']:.3g} vs atol {tol['atol']:g} + rtol {tol['rtol']:g}·|want| ({worst['tolerance_used']:.2g}× the bound)",
        f"  archive  {mar.path} ({mar.bytes / 1024:.1f} KiB)",
        f"  reports  {layout.reports.relative_to(layout.root)}/parity.md, manifest {manifest.path.relative_to(layout.root)}",
    ]
    if skipped and not ran:
        lines.append("  nothing changed; use --force (make export FORCE=1) to redo every stage")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
