"""Command line: `python -m pipeline <command> [options]`; `python -m pipeline <command> --help`.

Stages: train, trace, export, parity, package; `all` runs them in order and prints a
one-screen summary. generate writes text with a decoder's verified graph; serve / stop / token run the endpoint (TorchServe, or Ray Serve with
`--on ray`); bench writes the latency report; tune finds the serving config that meets a
p99 goal and packages the archive with it; reliability runs the fault harness. Each
command takes only its own options.
"""

# The top layer: argparse lives in this package only. Each command maps its options onto a
# library call (a settings object into `run`), and no library module imports pipeline.cli.
# options (what several commands share), stages, serving, bench, tune, reliability: one module each.

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from types import ModuleType

from pipeline.artifacts.environment import IMPORT_FAILURES, import_failure
from pipeline.errors import PipelineError
from pipeline.models import hf_model
from pipeline.spec import HF_PREFIX


def _commands() -> tuple[ModuleType, ...]:
    """The command modules; a dependency this Python lacks is named, with how to install it."""
    try:
        from pipeline.cli import bench, generate, reliability, serving, stages, tune
    except IMPORT_FAILURES as exc:
        failure = import_failure(exc)
        if failure is None:
            raise
        package = failure.distribution
        install = (
            f"make setup, or pip install -c constraints.txt -e . in the checkout (offline: bring the {package} wheel and pip install it)"
        )
        raise PipelineError("setup", failure.problem("the pipeline"), failure.fix(install)) from None
    return bench, generate, reliability, serving, stages, tune


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line and each command's own parser."""
    bench, generate, reliability, serving, stages, tune = _commands()

    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True, metavar="command")
    stages.add_parsers(commands)
    serving.add_parsers(commands)
    generate.add_parser(commands)
    bench.add_parser(commands)
    tune.add_parser(commands)
    reliability.add_parser(commands)
    return p, commands.choices


def did_you_mean(word: str, choices: list[str]) -> str:
    """The hint "; did you mean X?" where one of `choices` is close to a mistyped `word`, else ""."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.7)
    return f"; did you mean {close[0]}?" if close else ""


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse; an option the command does not take exits 2 with that command's own usage."""
    p, commands = parser()
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        p.error(f"no command {argv[0]!r}{did_you_mean(argv[0], list(commands))}; the commands are {', '.join(commands)}")
    args, extra = p.parse_known_args(argv)
    if extra:
        sub = commands[args.command]
        options = [o for action in sub._actions for o in action.option_strings]
        hints = "".join(did_you_mean(e.split("=")[0], options) for e in extra if e.startswith("--"))
        sub.error(f"unrecognized arguments: {' '.join(extra)}{hints}")
    if getattr(args, "task", None) is not None:
        if not args.model.startswith(HF_PREFIX):
            commands[args.command].error(f"--task is for a Hugging Face checkpoint (--model {HF_PREFIX}PATH), not {args.model!r}")
        args.model = hf_model(args.model, args.task)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        bench, generate, reliability, serving, stages, tune = _commands()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args = parse(sys.argv[1:] if argv is None else argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": serving.serve_command,
        "stop": serving.stop_command,
        "token": serving.token_command,
        "rayservice": serving.rayservice_command,
        "variants": stages.variants_command,
        "generate": generate.command,
        "bench": bench.command,
        "tune": tune.command,
        "reliability": reliability.command,
    }
    try:
        return commands.get(args.command, stages.stages_command)(args)
    except PipelineError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; finished artifacts are kept, unfinished ones were not written", file=sys.stderr)
        return 130
