"""`python -m pipeline tune`: the serving-config sweep's options, mapped onto `pipeline.bench.tune.run`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from pipeline.artifacts.names import VARIANTS
from pipeline.bench import tune
from pipeline.bench.tune import TuneSettings
from pipeline.cli.options import csv_of, load_generator_option, task_option


def add_parsers(commands) -> None:
    p = commands.add_parser(
        "tune",
        help="find, on a real TorchServe (or Ray Serve), the serving config that meets a p99 goal, and package the archive with it",
        description=tune.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = TuneSettings()
    p.add_argument(
        "--model", default=d.model, help="built-in model name, path to a .py file defining SPEC, or hf:PATH (default: %(default)s)"
    )
    task_option(p)
    p.add_argument("--root", type=Path, default=d.root, help="project folder (default: .)")
    p.add_argument(
        "--on",
        choices=("torchserve", "ray"),
        default=d.on,
        help="the server to tune for: TorchServe, or the same archive on a local Ray Serve cluster (default: %(default)s)",
    )
    p.add_argument("--p99-ms", type=float, required=True, help="the goal: p99 latency in ms that every concurrency must meet")
    p.add_argument("--concurrency", type=csv_of(int), default=d.concurrency, help="closed-loop client counts (default: 1,4,16,64)")
    p.add_argument("--seconds", type=float, default=d.seconds, help="seconds of load per config and concurrency (default: %(default)s)")
    p.add_argument("--batch-sizes", type=csv_of(int), default=d.batch_sizes, help="TorchServe batch sizes to try (default: 1,8,32)")
    p.add_argument(
        "--delays-ms", type=csv_of(int), default=d.delays_ms, help="max batch delays in ms, for batch sizes over 1 (default: 1,2,5)"
    )
    p.add_argument("--workers", type=csv_of(int), default=d.workers, help="worker counts to try; on Ray, replica counts (default: 1,2)")
    p.add_argument(
        "--threads",
        type=csv_of(int),
        default=d.threads,
        help="ONNX Runtime intra-op threads per worker to try, each with every worker count (default: 1 and the physical cores, "
        "a multi-threaded worker only where workers x threads fit the cores)",
    )
    p.add_argument("--variant", choices=VARIANTS, help="tune a smaller variant's archive (model_store/<model>-<variant>.mar) instead")
    load_generator_option(p, d.load_generator)


def command(args: argparse.Namespace) -> int:
    """Sweep, pick, package and print the summary; no config meeting the goal is a PipelineError (exit 1)."""
    # Every option is named after the settings field it sets.
    settings = TuneSettings(**{f.name: getattr(args, f.name) for f in fields(TuneSettings)})
    try:
        report = tune.run(settings)
    except KeyboardInterrupt:
        print("\ninterrupted; the archive was left as it was and no report was written", file=sys.stderr)
        return 130
    print(tune.console_summary(report))
    return 0
