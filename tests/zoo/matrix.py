"""The model zoo as a matrix: each standard architecture through every stage and one handler request.

`run_row` takes one model file of this folder through train, trace, export, pt2, parity and
package in its own project folder, then sends its example request through the handler
from the archive; a refusal records the stage, the reason and the fix. `render` makes the
"What goes through" table of the model spec page (`PAGE`, docs/model-spec.md);
`scripts/zoo_table.py` writes it there, and a test fails when the page and a fresh run of
the matrix disagree.
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts import checkpoint
from pipeline.artifacts.manifest import Manifest
from pipeline.errors import PipelineError
from pipeline.models import load_spec
from pipeline.runtimes.runners import TorchRunner
from pipeline.serving.common.contract import Contract
from pipeline.settings import Layout, Settings
from pipeline.stages import STAGES
from pipeline.stages.capture import capture_mode
from pipeline.stages.package import archive_contract
from pipeline.stages.parity import compare
from tests.helpers import archive_handler

ZOO_DIR = Path(__file__).resolve().parent
NOT_MODELS = {"__init__", "matrix", "test_zoo", "notes"}
ZOO = sorted(p.stem for p in ZOO_DIR.glob("*.py") if p.stem not in NOT_MODELS)
COLUMNS = (*STAGES, "handler")
START, END = "<!-- zoo:start -->", "<!-- zoo:end -->"
# The page whose "What goes through" section holds the table, between START and END.
PAGE = ZOO_DIR.parent.parent / "docs" / "model-spec.md"
ROWS = "rows.json"  # where `write` puts the rows, in the folder it ran them in


@dataclass
class Row:
    """One architecture: each stage's outcome, the worst parity error, and why it stopped, if it did."""

    model: str
    layers: str
    outcomes: dict[str, str] = field(default_factory=dict)  # column -> "pass" | "refused" | "not run" | "not made"
    worst_abs: float | None = None
    stage: str | None = None
    reason: str | None = None
    fix: str | None = None
    # How it went through when not plainly: the model file's LIMITATION (exporter limits, upstream issues).
    note: str | None = None

    @property
    def through(self) -> bool:
        """Served end to end: every stage passed, an optional artifact (TorchScript, the package) made or said why not."""
        return all(self.outcomes.get(c) in ("pass", "not made") for c in COLUMNS)


def layers_of(model: str) -> tuple[str, str | None]:
    """The first line of the model file's docstring (what architecture it is), and its LIMITATION, if any."""
    tree = ast.parse((ZOO_DIR / f"{model}.py").read_text())
    doc = (ast.get_docstring(tree) or model).strip().splitlines()[0].rstrip(".")
    limitation = next(
        (
            ast.literal_eval(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LIMITATION" for t in node.targets)
        ),
        None,
    )
    return doc, limitation


def run_row(model: str, root: Path) -> Row:
    path = ZOO_DIR / f"{model}.py"
    spec = load_spec(str(path))
    settings = Settings(model=str(path), root=root)
    layout = Layout(root.resolve(), spec.name)
    layers, limitation = layers_of(model)
    row = Row(model, layers, {c: "not run" for c in COLUMNS}, note=limitation)
    for name, stage in STAGES.items():
        try:
            result = stage(settings)
        except PipelineError as exc:
            row.outcomes[name] = "refused"
            row.stage, row.reason, row.fix = name, exc.problem, exc.fix
            return row
        row.outcomes[name] = "not made" if result.details.get("not_made") else "pass"
        if row.outcomes[name] == "not made":  # an optional artifact (TorchScript, the package): the chain goes on
            row.note = "; ".join(n for n in (row.note, f"[{name}] {result.details['not_made']}") if n)
        if name == "parity":
            row.worst_abs = float(result.details["worst"]["max_abs"])
    row.outcomes["handler"] = _handler_answers(spec, settings, layout, root / "handler")
    if row.outcomes["handler"] != "pass":
        row.stage, row.reason, row.fix = "handler", row.outcomes["handler"], "see the handler's answer"
        row.outcomes["handler"] = "refused"
    return row


def _handler_answers(spec, settings: Settings, layout: Layout, folder: Path) -> str:
    """The example request through the archive's handler: "pass" when it matches eager, else what went wrong."""
    module, ctx = archive_handler(layout.mar, folder)
    body = json.dumps(spec.example_request).encode()
    [raw] = module.handle([{"body": body}], ctx)
    status = ctx.status.get(0, (200, ""))[0]
    if status != 200:
        return f"HTTP {status}: {json.loads(raw).get('error')}"
    answer = json.loads(raw)
    feed, single = Contract(archive_contract(settings, spec)).parse(json.loads(body))
    model, _ = checkpoint.load_model(Manifest(layout.root, spec.name), spec, "zoo")
    with capture_mode():
        want = TorchRunner("eager", model, spec).infer(feed)
    for t in spec.outputs:
        got = np.asarray(answer[t.name], dtype=np.float64).reshape(want[t.name].shape)
        if not compare("handler", "example", t.name, want[t.name], got, spec.tolerance).passed:
            return f"answer for {t.name} differs from eager"
    return "pass"


def run_all(work: Path, models: list[str] | None = None) -> list[Row]:
    """Every row, in `ZOO`'s order, one process per core: each model's stages are in-process and independent."""
    names = models or ZOO
    processes = max(1, min(len(names), os.cpu_count() or 1))
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        return list(pool.map(run_row, names, [work / m for m in names]))


def _one_thread() -> None:
    """One intra-op thread per process, so that the processes share the cores instead of contending for them."""
    import torch

    torch.set_num_threads(1)


MARK = {"pass": "✓", "refused": "✗", "not run": "·", "not made": "–"}


def render(rows: list[Row]) -> str:
    """The page's table: one row per architecture, every stage, the worst parity error, the refusal."""
    through = sum(r.through for r in rows)
    lines = [
        START,
        f"{through} of {len(rows)} architectures go end to end ({through / len(rows):.0%}); "
        "✓ passed, ✗ refused (the reason and the fix follow), – not made (an optional artifact; the chain goes on), · not reached. Regenerate with "
        "`python scripts/zoo_table.py`; a test fails when this table and the matrix disagree.",
        "",
        "| model | layers | " + " | ".join(COLUMNS) + " | worst parity error | notes; for a refusal, the reason and the fix |",
        "| --- | --- | " + " | ".join(":---:" for _ in COLUMNS) + " | ---: | --- |",
    ]
    for r in rows:
        worst = "—" if r.worst_abs is None else f"{r.worst_abs:.1e}"
        why = _one_line(r.note, 400)
        if not r.through:
            why = (
                f"**{_one_line(r.note, 400)}**. [{r.stage}] {_one_line(r.reason)} — {_one_line(r.fix)}"
                if r.note
                else f"[{r.stage}] {_one_line(r.reason)} — {_one_line(r.fix)}"
            )
        lines.append(f"| `{r.model}` | {r.layers} | " + " | ".join(MARK[r.outcomes[c]] for c in COLUMNS) + f" | {worst} | {why} |")
    lines.append(END)
    return "\n".join(lines)


def _one_line(text: str | None, limit: int = 220) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def page_table(page: str) -> str:
    """The table in the text of `PAGE`, markers included."""
    start, end = page.index(START), page.index(END) + len(END)
    return page[start:end]


def comparable(table: str) -> list[tuple[str, ...]]:
    """The table's rows without the parity error column, whose digits vary by machine."""
    rows = []
    for line in table.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.append((*cells[: 2 + len(COLUMNS)], cells[-1]))
    return rows


def to_json(rows: list[Row]) -> list[dict]:
    return [asdict(r) | {"through": r.through} for r in rows]


def from_json(data: list[dict]) -> list[Row]:
    return [Row(**{k: v for k, v in d.items() if k != "through"}) for d in data]


def write(folder: Path) -> None:
    """Every row, run in `folder`, and the rows as JSON in its rows.json (read back with from_json)."""
    (folder / ROWS).write_text(json.dumps(to_json(run_all(folder))))
