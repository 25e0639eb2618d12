"""`python -m pipeline bench`: the benchmark's options, mapped onto `pipeline.bench.latency.run`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.bench import generation, latency, served_generation
from pipeline.bench.engines import CUDA_GRAPH_ENGINES, ENGINES
from pipeline.bench.latency import STAGE, BenchSettings
from pipeline.cli.options import csv_of, load_generator_option, task_option
from pipeline.errors import PipelineError
from pipeline.runtimes.runners import cuda_available
from pipeline.settings import Settings, resolve
from pipeline.spec import PRECISIONS, Device


def add_parsers(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="latency report: eager vs TorchScript vs ONNX Runtime, and the served endpoint",
        description=latency.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(bench)
    task_option(bench)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `python -m pipeline bench`: a flat table of `add_argument` calls, one per option, which reads best whole."""
    d = BenchSettings()
    p.add_argument(
        "--model", default=d.model, help="built-in model name, path to a .py file defining SPEC, or hf:PATH (default: %(default)s)"
    )
    p.add_argument("--root", type=Path, default=d.root, help="project folder (default: .)")
    g = generation.GenerationSettings()
    p.add_argument(
        "--engines",
        type=csv_of(str, (*ENGINES, *generation.ENGINES)),
        default=None,
        help=f"comma-separated, from {', '.join(ENGINES)} (default: {','.join(d.engines)}); for a text-generation "
        f"model from {', '.join(generation.ENGINES)} (default: all)",
    )
    p.add_argument(
        "--batch-sizes",
        type=csv_of(int),
        default=None,
        help="default: 1,8,64,512,4096, as far as --sweep allows; for a text-generation model 1,8",
    )
    p.add_argument(
        "--prompt-lengths",
        type=csv_of(int),
        default=g.prompt_lengths,
        help="text-generation: prompts of exactly these token counts (default: 32,512)",
    )
    p.add_argument(
        "--new-tokens", type=int, default=g.new_tokens, help="text-generation: new tokens per row, EOS ignored (default: %(default)s)"
    )
    p.add_argument(
        "--repeats", type=int, default=g.repeats, help="text-generation: timed runs per engine after a warm-up (default: %(default)s)"
    )
    p.add_argument(
        "--genai-python",
        type=Path,
        default=g.genai_python,
        help="text-generation: the onnxruntime-genai peer's interpreter (make genai-peer makes it; default: %(default)s)",
    )
    p.add_argument(
        "--sweep",
        choices=["sized", "full"],
        default=d.sweep,
        help="sized: batch sizes past 8 run per engine only where its measured cost, scaled to that batch, fits "
        "--sweep-budget and --sweep-memory (the report lists what was left out); full: every batch size (default: %(default)s)",
    )
    p.add_argument(
        "--sweep-budget", type=float, default=d.sweep_budget_s, help="seconds the sized in-process sweep may spend (default: %(default)s)"
    )
    p.add_argument(
        "--sweep-memory",
        type=float,
        default=d.sweep_budget_mb,
        help="MiB one batch size may take in the sized sweep, at most half the free memory (default: %(default)s)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=d.time_limit_s,
        help="seconds the whole run may take: no engine, batch size, cold start or served sweep starts past them, "
        "nor one whose measured cost would overrun them; the report says what was left out (default: no limit)",
    )
    p.add_argument(
        "--length",
        type=lengths,
        default={},
        metavar="AXIS=N",
        help="in process, stretch each input's AXIS to N (e.g. seq=512 for a text model; comma-separated for several "
        "axes); the reports are then latency-seq512.*, beside the others (default: the spec's sample inputs)",
    )
    p.add_argument(
        "--device",
        choices=["cpu", "cuda", "all"],
        default="all",
        help="cpu, cuda, or all: the CPU plus CUDA where a GPU is present (default: all)",
    )
    p.add_argument(
        "--threads", type=int, default=d.threads, help="intra-op threads for torch and ONNX Runtime (default: physical cores, %(default)s)"
    )
    p.add_argument(
        "--budget", type=float, default=d.budget_s, help="seconds of timed calls per engine and batch size (default: %(default)s)"
    )
    p.add_argument("--rounds", type=int, default=d.rounds, help="interleaved rounds (default: %(default)s)")
    p.add_argument(
        "--warmup", type=float, default=d.warmup_s, help="seconds of untimed warm-up per engine and batch (default: %(default)s)"
    )
    p.add_argument("--no-cold-start", action="store_true", help="skip the cold-start processes")
    p.add_argument(
        "--cold-start-compile", action="store_true", help="also time torch.compile's cold start in a fresh process (compiles from scratch)"
    )
    p.add_argument(
        "--served",
        choices=["auto", "running", "ray", "off"],
        default=d.served,
        help="auto: start TorchServe with the default and the tuned config; running: the server "
        "`make serve` started; ray: TorchServe (default, tuned) beside Ray Serve (1 and 2 replicas) on a "
        "local Ray cluster; off: in-process only. A text-generation model: auto or ray streams the OpenAI API "
        "from TorchServe and Ray Serve, each where it can run; off: in-process only (default: %(default)s)",
    )
    s = served_generation.ServedSettings()
    p.add_argument(
        "--concurrency",
        type=csv_of(int),
        default=None,
        help=f"served client counts (default: 1,4,16,64; for a text-generation model streams, {','.join(map(str, s.streams))})",
    )
    p.add_argument(
        "--served-seconds",
        type=float,
        default=None,
        help=f"seconds of load per concurrency (default: {d.served_seconds:g}; for a text-generation model {s.seconds:g})",
    )
    p.add_argument(
        "--load-seconds",
        type=float,
        default=s.load_seconds,
        help=f"text-generation: seconds of the served load phase at {s.load_streams} streams, for its errors and peak memory; "
        "0 skips it (default: %(default)s)",
    )
    load_generator_option(p, d.load_generator)
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="on CUDA, add ONNX Runtime with CUDA graphs and its PyTorch peers (a CUDAGraph replay and torch.compile mode=reduce-overhead)",
    )
    p.add_argument(
        "--cuda-precision",
        choices=PRECISIONS,
        default=d.cuda_precision,
        help="ONNX Runtime CUDA precision (default: %(default)s, what archives serve unless the spec says tf32)",
    )
    p.add_argument(
        "--cudnn-search",
        choices=["EXHAUSTIVE", "HEURISTIC", "DEFAULT"],
        default=d.cudnn_conv_algo_search,
        help="cuDNN convolution algorithm search for ONNX Runtime on CUDA (default: %(default)s)",
    )


def lengths(text: str) -> dict[str, int]:
    """`seq=512` (or `seq=512,other=3`) as {"seq": 512}."""
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: give AXIS=N with N a positive integer, e.g. seq=512")
        out[name.strip()] = int(value)
    if not out:
        raise argparse.ArgumentTypeError("give AXIS=N, e.g. seq=512")
    return out


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    devices: tuple[Device, ...]
    if args.device == "cpu":
        devices = ("cpu",)
    elif args.device == "cuda":
        devices = ("cuda",)
    else:
        devices = ("cpu", "cuda") if cuda_available() else ("cpu",)
    d = BenchSettings()
    engines = args.engines or d.engines
    if args.cuda_graph:
        engines = (*engines, *(e for e in CUDA_GRAPH_ENGINES if e not in engines))
    served_seconds = d.served_seconds if args.served_seconds is None else args.served_seconds
    positive = (args.budget, args.rounds, args.threads, served_seconds, args.sweep_budget, args.sweep_memory)
    if min(positive) <= 0 or (args.time_limit is not None and args.time_limit <= 0):
        raise PipelineError(
            STAGE,
            "--budget, --rounds, --threads, --served-seconds, --sweep-budget, --sweep-memory and --time-limit must be positive",
            "e.g. --budget 1 --rounds 5",
        )
    return BenchSettings(
        model=args.model,
        root=args.root,
        engines=engines,
        batch_sizes=args.batch_sizes or d.batch_sizes,
        sweep=args.sweep,
        sweep_budget_s=args.sweep_budget,
        sweep_budget_mb=args.sweep_memory,
        devices=devices,
        threads=args.threads,
        budget_s=args.budget,
        rounds=args.rounds,
        warmup_s=args.warmup,
        cold_start=not args.no_cold_start,
        cold_start_compile=args.cold_start_compile,
        served=args.served,
        concurrency=args.concurrency or d.concurrency,
        served_seconds=served_seconds,
        load_generator=args.load_generator,
        cuda_precision=args.cuda_precision,
        cudnn_conv_algo_search=args.cudnn_search,
        lengths=args.length,
        time_limit_s=args.time_limit,
    )


def generation_settings_from_args(args: argparse.Namespace) -> generation.GenerationSettings:
    """A text-generation model's options: tokens per second per engine, prompt length and batch."""
    g = generation.GenerationSettings()
    return generation.GenerationSettings(
        model=args.model,
        root=args.root,
        engines=args.engines or g.engines,
        prompt_lengths=args.prompt_lengths,
        new_tokens=args.new_tokens,
        batch_sizes=args.batch_sizes or g.batch_sizes,
        repeats=args.repeats,
        threads=args.threads,
        genai_python=args.genai_python,
        served=served_settings_from_args(args),
    )


def served_settings_from_args(args: argparse.Namespace) -> served_generation.ServedSettings | None:
    """A text-generation model's served options: the stream counts, their seconds, the load phase; None with --served off."""
    if args.served == "off":
        return None
    if args.served == "running":
        raise PipelineError(
            STAGE,
            "--served running is not measured for a text-generation model: the benchmark starts its own servers",
            "use --served auto (TorchServe and Ray Serve, each where it can run) or --served off",
        )
    s = served_generation.ServedSettings()
    return served_generation.ServedSettings(
        streams=args.concurrency or s.streams,
        seconds=s.seconds if args.served_seconds is None else args.served_seconds,
        load_seconds=args.load_seconds,
        prompt_tokens=args.prompt_lengths[0],
        max_tokens=args.new_tokens,
        threads=args.threads,
    )


def command(args: argparse.Namespace) -> int:
    """Run the benchmark the options describe and print the summary (the CLI reports a PipelineError)."""
    try:
        if resolve(Settings(model=args.model, root=args.root))[0].generation is not None:  # a decoder: tokens per second
            report = generation.run(generation_settings_from_args(args))
            print(generation.console_summary(report))
            return 0
        settings = settings_from_args(args)
        report = latency.run(settings)
    except KeyboardInterrupt:
        print("\ninterrupted; no report was written", file=sys.stderr)
        return 130
    from pipeline.bench.report import console_summary

    print(console_summary(report, settings))
    return 0
