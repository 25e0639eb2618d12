"""The stage commands: train, trace, export, pt2, parity, package, all (with its summary), variants."""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import threading
import time
from collections.abc import Iterator

from tqdm import tqdm

from pipeline.artifacts import cost
from pipeline.artifacts.files import human_bytes
from pipeline.artifacts.names import VARIANTS
from pipeline.cli.options import archive_options, batch_sizes, model_options, settings_from
from pipeline.settings import PARITY_BATCH_SIZES, Settings, StageResult
from pipeline.spec import PRECISIONS

STAGE_NAMES = ("train", "trace", "export", "pt2", "parity", "package")
STAGE_HELP = {
    "train": "fit the model (or load its weights) and write the checkpoint",
    "trace": "trace the model to TorchScript and check the trace",
    "export": "export the model to ONNX with its dynamic axes (this stage alone; make export runs them all, as `all` does)",
    "pt2": "torch.export and AOTInductor: compile the model into model.pt2, kernels with no Python model code (TorchScript's successor)",
    "parity": "the gate: TorchScript, ONNX Runtime and the AOTInductor package against eager PyTorch",
    "package": "build model_store/<model>.mar from the verified ONNX file",
    "all": "every stage in order, skipping what is up to date",
    "variants": "int8 (CPU) and fp16 (CUDA) variants of the verified model: built, gated by parity and the task metric, packaged",
}


def stage_options(p: argparse.ArgumentParser, name: str) -> None:
    model_options(p)
    p.add_argument("--force", action="store_true", help="redo the stage(s) even when inputs and settings are unchanged")
    if name in ("train", "all"):
        p.add_argument("--seed", type=int, default=0, help="seed for training and sample inputs (default: 0)")
    capture_options(p, name)
    if name in ("parity", "package", "all"):
        p.add_argument(
            "--cuda-precision",
            choices=PRECISIONS,
            help="CUDA precision to verify and serve: fp32 (exact, ONNX Runtime's TF32 off) or tf32 "
            "(needs the spec's tf32_tolerance) (default: the model's, fp32 unless it says tf32)",
        )
    if name in ("package", "all"):
        archive_options(p)
    if name in ("parity", "all"):
        parity_options(p)


def capture_options(p: argparse.ArgumentParser, name: str) -> None:
    """What trace, export and pt2 make: TorchScript or not, the exporter's fallback, the AOTInductor package or not."""
    if name in ("trace", "all"):
        p.add_argument(
            "--require-torchscript",
            action="store_true",
            help="stop where TorchScript cannot be made (by default the chain goes on without it: the archive serves "
            "the ONNX graph, and the manifest and parity report say why TorchScript was not made)",
        )
        p.add_argument(
            "--torchscript",
            action=argparse.BooleanOptionalAction,
            default=Settings.torchscript,
            help="make TorchScript (deprecated by torch in favour of torch.export); --no-torchscript skips it on purpose, "
            "and the chain goes on with ONNX and the AOTInductor package (default: on)",
        )
    if name in ("pt2", "all"):
        p.add_argument(
            "--pt2",
            action=argparse.BooleanOptionalAction,
            default=Settings.pt2,
            help="compile the AOTInductor package (model.pt2, about 10 s and up with the C++ compiler); --no-pt2 skips it (default: on)",
        )
    if name in ("export", "all"):
        p.add_argument(
            "--exporter-fallback",
            action=argparse.BooleanOptionalAction,
            default=Settings.exporter_fallback,
            help="where the torch.export-based ONNX exporter fails, use the TorchScript-based one "
            "(recorded in the manifest, checked by the same parity gate); --no-exporter-fallback stops there instead "
            "(default: on)",
        )


def parity_options(p: argparse.ArgumentParser) -> None:
    """The gate's tolerances, batch sizes and sweep budget."""
    p.add_argument("--atol", type=float, help="parity absolute tolerance (default: the model's)")
    p.add_argument("--rtol", type=float, help="parity relative tolerance (default: the model's)")
    p.add_argument(
        "--scaled", type=float, help="parity tolerance as a fraction of each output's scale, its largest |value| (default: the model's)"
    )
    p.add_argument(
        "--parity-batch-sizes", type=batch_sizes, default=PARITY_BATCH_SIZES, help="batch sizes parity checks (default: %(default)s)"
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


def add_parsers(commands) -> None:
    """train ... package, all, variants."""
    for name in (*STAGE_NAMES, "all"):
        stage_options(commands.add_parser(name, help=STAGE_HELP[name], description=STAGE_HELP[name]), name)
    variants = commands.add_parser("variants", help=STAGE_HELP["variants"], description=STAGE_HELP["variants"])
    model_options(variants)
    variants.add_argument("--int8", action="store_true", help="the int8 variant, for the CPU")
    variants.add_argument("--fp16", action="store_true", help="the fp16 variant, for CUDA (its gate needs a GPU)")
    variants.add_argument("--force", action="store_true", help="rebuild and re-gate even when inputs and settings are unchanged")
    variants.add_argument("--seed", type=int, default=0, help="seed for the calibration and parity inputs (default: 0)")
    variants.add_argument(
        "--parity-batch-sizes", type=batch_sizes, default=PARITY_BATCH_SIZES, help="batch sizes the gate checks (default: %(default)s)"
    )
    archive_options(variants)


def line(result: StageResult, peak_mb: float | None = None) -> str:
    mark = "!" if result.details.get("not_made") else "·" if result.skipped else "✓"
    verb = "skipped" if result.skipped else f"ran in {result.seconds:.1f}s"
    peak = f"peak {peak_mb / 1024:.1f} GiB" if peak_mb is not None and not result.skipped else ""
    return f"  {mark} {result.stage:<8} {verb:<14} {peak:<15} {result.summary}"


def variants_command(args: argparse.Namespace) -> int:
    from pipeline.stages import variants

    wanted = tuple(v for v in VARIANTS if getattr(args, v))
    if not wanted:
        print("error: name at least one variant: --int8 and/or --fp16", file=sys.stderr)
        return 2
    cost.start()
    for result in variants.run(settings_from(args), wanted):
        print(line(result, cost.peak_mb()), flush=True)
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
        print(line(result, cost.peak_mb()), flush=True)
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


def summary(results: list[StageResult], settings: Settings, seconds: float) -> str:
    from pipeline.artifacts.manifest import Manifest
    from pipeline.artifacts.names import KEYS, MAR, ONNX, PARITY, PT2, TORCHSCRIPT
    from pipeline.settings import resolve
    from pipeline.stages.parity import OutputDiff

    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    ran = [r.stage for r in results if not r.skipped]
    skipped = [r.stage for r in results if r.skipped]
    parity = manifest.records[PARITY]
    worst = OutputDiff(**parity.details["worst"])  # the typed record parity wrote
    tol = parity.settings
    mar = manifest.records[MAR]
    stages = [manifest.records[key] for key in KEYS if key in manifest.records]
    lines = [
        "",
        f"{spec.name}: done in {seconds:.1f}s — ran {len(ran)} stage(s){': ' + ', '.join(ran) if ran else ''}"
        f"{'; skipped (up to date) ' + ', '.join(skipped) if skipped else ''}",
        f"  parity   PASS; worst {worst.engine} '{worst.output}' at {worst.case}: max abs {worst.max_abs:.3g} "
        f"({worst.max_scaled:.2g} of its scale), max rel {worst.max_rel:.3g} vs atol {tol['atol']:g} + rtol {tol['rtol']:g}·|want| "
        f"+ scaled {tol.get('scaled', 0):g}·scale ({worst.tolerance_used:.2g}× the bound)",
        f"  sweep    batch sizes {parity.details.get('batch_sizes', tol['batch_sizes'])}"
        + (
            f"; left out {', '.join(parity.details['left_out'])} (over the budget, see parity.md)" if parity.details.get("left_out") else ""
        ),
    ]
    if not_made := manifest.records[TORCHSCRIPT].not_made:
        lines.append(f"  NOTE     TorchScript not made: {not_made}")
    if PT2 in manifest.records and (not_made := manifest.records[PT2].not_made):
        lines.append(f"  NOTE     AOTInductor package not made: {not_made}")
    if failure := manifest.records[ONNX].details.get("dynamo_failure"):
        lines.append(f"  NOTE     the ONNX graph was made by the TorchScript-based exporter, because {failure}")
    for v in parity.details.get("vacuous", []):
        lines.append(f"  WARNING  output '{v['output']}' proves nothing: {v['why']}")
    lines += [
        f"  archive  {mar.path} ({human_bytes(mar.bytes)})"
        + f", CUDA precision {tol.get('cuda_precision', 'fp32')}"
        + ("" if tol.get("cuda") else " (declared, not verified: no CUDA device here)"),
        "  cost     "
        + ", ".join(f"{r.stage} {r.seconds:.1f}s {r.peak_rss_mb / 1024:.1f} GiB" for r in stages)
        + " (as recorded: time, peak memory)",
        f"  reports  {layout.reports.relative_to(layout.root)}/parity.md, manifest {manifest.path.relative_to(layout.root)}",
    ]
    if skipped and not ran:
        lines.append("  nothing changed; to redo every stage: make export FORCE=1 (python -m pipeline all --force)")
    return "\n".join(lines)
