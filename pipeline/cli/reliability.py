"""`python -m pipeline reliability`: the fault harness's options, mapped onto `pipeline.reliability.suite.run`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import task_option
from pipeline.reliability import suite
from pipeline.settings import DEFAULT_MODEL


def add_parsers(commands) -> None:
    p = commands.add_parser(
        "reliability",
        help="faults, hostile input and load -> reports/reliability.md",
        description=suite.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="the CI-sized run (fewer kill points, 500 fuzz bodies, 20,000-request soak)")
    p.add_argument("--root", type=Path, default=Path("."), help="where reports/reliability.{md,json} are written (default: .)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model to build and attack (default: %(default)s)")
    p.add_argument("--only", action="append", choices=suite.SECTIONS, help="run only this section (repeatable)")
    p.add_argument("--work", type=Path, help="keep the working copies here instead of a temporary folder")
    task_option(p)


def command(args: argparse.Namespace) -> int:
    options = suite.SuiteOptions(
        quick=args.quick, root=args.root, model=args.model, sections=tuple(args.only or suite.SECTIONS), work=args.work
    )
    return suite.run(options)
