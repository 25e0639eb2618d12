"""What several commands share: argument types, the model and archive options, their settings."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

from pipeline.serving.backends import BACKENDS, DEFAULT
from pipeline.settings import DEFAULT_MODEL, PARITY_BATCH_SIZES, SERVE_ENGINES, Settings
from pipeline.spec import HF_TASKS


def csv_of(kind: Callable[[str], object], allowed: tuple | None = None):
    def parse(text: str) -> tuple:
        items = tuple(kind(s.strip()) for s in text.split(",") if s.strip())
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        if allowed is not None and any(i not in allowed for i in items):
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(map(str, allowed))}")
        if kind is int and min(cast(tuple[int, ...], items)) < 1:
            raise argparse.ArgumentTypeError("values must be positive integers")
        return items

    return parse


def batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive integers, e.g. 1,2,7,64")
    return sizes


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="built-in model name, path to a .py file defining SPEC, or hf:PATH, a save_pretrained folder (default: %(default)s)",
    )
    task_option(p)
    p.add_argument("--root", type=Path, default=Path("."), help="project folder holding artifacts/, reports/, model_store/ (default: .)")


def task_option(p: argparse.ArgumentParser) -> None:
    # It travels inside the model string (hf:PATH#task=TASK), so every command and every process it starts sees it.
    p.add_argument("--task", choices=HF_TASKS, help="with --model hf:PATH: the task (default: the one config.json's architectures say)")


def archive_options(p: argparse.ArgumentParser) -> None:
    """The TorchServe model config an archive carries (package, all, variants)."""
    p.add_argument(
        "--batch-size",
        type=positive,
        default=Settings.serve_batch_size,
        help="TorchServe batches requests up to this size (default: %(default)s; 1 turns batching off)",
    )
    p.add_argument(
        "--max-batch-delay-ms",
        type=positive,
        default=Settings.serve_max_batch_delay_ms,
        help="how long TorchServe waits to fill a batch, in whole ms; it always waits this long for a second "
        "request, and 0 would mean its 100 ms default (default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=positive, default=Settings.serve_workers, help="TorchServe workers for the model (default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=positive,
        default=Settings.serve_threads,
        help="ONNX Runtime intra-op threads per worker, written into the archive's io_contract.json; an explicit "
        "OMP_NUM_THREADS on the server still wins (default: none, the server's choice: ONNX Runtime's on TorchServe, "
        "num_cpus on Ray; python -m pipeline tune measures which is best)",
    )
    p.add_argument(
        "--engine",
        choices=SERVE_ENGINES,
        default=Settings.serve_engine,
        help="what the archive serves with: onnxruntime (the ONNX graph) or aotinductor (the AOTInductor package for the "
        "CPU, model.pt2, which parity verified), written into its io_contract.json (default: %(default)s)",
    )
    p.add_argument(
        "--max-streams",
        type=positive,
        help="a text-generation model: requests generated at once, their rows sharing each decode step (default: 16)",
    )
    p.add_argument(
        "--max-queued",
        type=positive,
        help="a text-generation model: requests that may wait beyond --max-streams; past them a 503 with Retry-After (default: 64)",
    )
    p.add_argument(
        "--request-timeout-s",
        type=positive,
        help="a text-generation model: each request's wall-clock limit, then it ends with an error (default: 300)",
    )


def load_generator_option(p: argparse.ArgumentParser, default: str) -> None:
    """The served load's generator, for the commands that load a real server (bench, tune)."""
    p.add_argument(
        "--load-generator",
        choices=["auto", "wrk", "locust"],
        default=default,
        help="the served load: wrk where installed (auto), else locust (default: %(default)s)",
    )


def on_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on",
        choices=sorted(BACKENDS),
        default=DEFAULT,
        help="the single TorchServe endpoint, or the same archive on Ray Serve (default: %(default)s)",
    )


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
        exporter_fallback=getattr(args, "exporter_fallback", Settings.exporter_fallback),
        require_torchscript=getattr(args, "require_torchscript", Settings.require_torchscript),
        torchscript=getattr(args, "torchscript", Settings.torchscript),
        pt2=getattr(args, "pt2", Settings.pt2),
        serve_engine=getattr(args, "engine", Settings.serve_engine),
        serve_batch_size=getattr(args, "batch_size", Settings.serve_batch_size),
        serve_max_batch_delay_ms=getattr(args, "max_batch_delay_ms", Settings.serve_max_batch_delay_ms),
        serve_workers=getattr(args, "workers", Settings.serve_workers),
        serve_threads=getattr(args, "threads", Settings.serve_threads),
        serve_max_streams=getattr(args, "max_streams", None),
        serve_max_queued=getattr(args, "max_queued", None),
        serve_request_timeout_s=getattr(args, "request_timeout_s", None),
        variant=getattr(args, "variant", None),
    )


def rel(path) -> str:
    """A path as the user would type it from where they stand."""
    return os.path.relpath(path, Path.cwd())
