"""Command line: `python -m pipeline <command> [options]`; `python -m pipeline <command> --help`.

Stages: train, trace, export, parity, package; `all` runs them in order and prints a
one-screen summary. generate writes text with a decoder's verified graph; serve / stop / token / update / rollback run the
endpoint (TorchServe, or Ray Serve with `--on ray`); bench writes the latency report; tune finds the serving config that meets a
p99 goal and packages the archive with it; reliability runs the fault harness. Each
command takes only its own options.
"""

# The top layer: argparse lives in this package only. Each command maps its options onto a
# library call (a settings object into `run`), and no library module imports pipeline.cli.
# options (what several commands share), stages, serving, bench, tune, reliability: one module each.

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Callable
from types import ModuleType

from pipeline.artifacts.environment import IMPORT_FAILURES, import_failure
from pipeline.errors import PipelineError
from pipeline.models import hf_model
from pipeline.spec import HF_PREFIX

# Each command: the module that defines it and the function that runs it. A command line naming one
# imports that module alone (`token` need not import the benchmark's torch); --help imports them all.
COMMANDS: dict[str, tuple[str, str]] = {
    **{stage: ("stages", "stages_command") for stage in ("train", "trace", "export", "pt2", "parity", "package", "all")},
    "variants": ("stages", "variants_command"),
    "serve": ("serving", "serve_command"),
    "stop": ("serving", "stop_command"),
    "token": ("serving", "token_command"),
    "update": ("serving", "update_command"),
    "rollback": ("serving", "update_command"),
    "rayservice": ("serving", "rayservice_command"),
    "generate": ("generate", "command"),
    "bench": ("bench", "command"),
    "tune": ("tune", "command"),
    "reliability": ("reliability", "command"),
}
MODULES = ("stages", "serving", "generate", "bench", "tune", "reliability")  # in --help's order


def _modules(command: str | None = None) -> dict[str, ModuleType]:
    """The command modules (the one defining `command`, where it is one); a dependency this Python lacks is named, with how to install it."""
    names = (COMMANDS[command][0],) if command in COMMANDS else MODULES
    try:
        return {name: importlib.import_module(f"pipeline.cli.{name}") for name in names}
    except IMPORT_FAILURES as exc:
        raise setup_error(exc) from None


def setup_error(exc: BaseException) -> PipelineError:
    """A package the pipeline imports that is missing or cannot load, named with how to install it (or `exc` itself, re-raised, where it is the pipeline's own error)."""
    failure = import_failure(exc)
    if failure is None:
        raise exc
    package = failure.distribution
    install = f"make setup, or pip install -c constraints.txt -e . in the checkout (offline: bring the {package} wheel and pip install it)"
    return PipelineError("setup", failure.problem("the pipeline"), failure.fix(install))


def parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line and each command's own parser: every command's, or `command`'s alone."""
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True, metavar="command")
    for module in _modules(command).values():
        module.add_parsers(commands)
    return p, commands.choices


def did_you_mean(word: str, choices: list[str]) -> str:
    """The hint "; did you mean X?" where one of `choices` is close to a mistyped `word`, else ""."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.7)
    return f"; did you mean {close[0]}?" if close else ""


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse; an option the command does not take exits 2 with that command's own usage."""
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        argparse.ArgumentParser(prog="python -m pipeline").error(
            f"no command {argv[0]!r}{did_you_mean(argv[0], list(COMMANDS))}; the commands are {', '.join(COMMANDS)}"
        )
    p, commands = parser(argv[0] if argv else None)
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
    argv = sys.argv[1:] if argv is None else argv
    try:
        _modules(argv[0] if argv else None)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args = parse(argv)
    module, function = COMMANDS[args.command]
    run: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(f"pipeline.cli.{module}"), function)
    try:
        try:
            return run(args)
        except IMPORT_FAILURES as exc:  # a command imports what it needs when it runs
            raise setup_error(exc) from None
    except PipelineError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; finished artifacts are kept, unfinished ones were not written", file=sys.stderr)
        return 130
