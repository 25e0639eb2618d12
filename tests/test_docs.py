"""The documentation: the CLI reference matches the parser, and every repository path it names exists.

Paths are looked for in every Markdown page (README.md, docs/) and in the comments and
docstrings of the Python files under pipeline/, tests/, scripts/ and handlers/: a token that starts
with one of the repository's own folders (`pipeline/`, `tests/`, `scripts/`, `handlers/`,
`docs/`, `.ci/`, and `config`, which does not exist, so any path under it is stale), and
dotted module names (`pipeline.stages.parity`), which must name a module or package, or a
name one binds.

Skipped, on purpose:
- outputs the docs describe, never in the repository: `artifacts/<model>/...`,
  `reports/...`, `model_store/...`, `run/...`, `logs/...`, `site/...` (none of them starts
  with a folder above, so the pattern does not match them);
- placeholders and globs: a token with `<...>` or `*` in it (`tests/<area>/`);
- URLs and the tails of longer paths: a token right after `/`, `.`, `:` or a word character
  (`https://github.com/.../tests/x`, `/tmp/tests/x`, `../pipeline/x`);
- `{a,b}` is expanded (`pipeline/stages/{train,trace}.py` names two files).
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import tokenize
from pathlib import Path

from tests.helpers import REPO

ROOTS = ("pipeline", "tests", "scripts", "handlers", "docs", r"\.ci", "config")
PATH = re.compile(r"(?<![\w./:-])(?:" + "|".join(ROOTS) + r")/[\w./<>{},*-]*")
MODULE = re.compile(r"(?<![\w./:-])(?:pipeline|tests|handlers)(?:\.[A-Za-z_]\w*)+")
CODE_FOLDERS = ("pipeline", "tests", "scripts", "handlers")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def python_files() -> list[Path]:
    return sorted(p for folder in CODE_FOLDERS for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def prose_of_python(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring: what a person reads, not the code."""
    source = path.read_text()
    found = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and ast.get_docstring(node):
            first = node.body[0]
            found.append((first.lineno, ast.get_docstring(node, clean=False) or ""))
    return found


def _expand(token: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", token)
    if not match:
        return [token]
    return [e for part in match.group(1).split(",") for e in _expand(token[: match.start()] + part + token[match.end() :])]


def paths_in(text: str) -> list[str]:
    found = []
    for token in PATH.findall(text):
        token = token.rstrip(".,-")
        if "<" in token or ">" in token or "*" in token:
            continue
        found.extend(_expand(token))
    return found


def bound_names(module: Path) -> set[str]:
    """The names a module binds at its top level: defs, classes, assignments, imports."""
    names: set[str] = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def module_exists(dotted: str) -> bool:
    """A module or package, or an attribute of one (`pipeline.spec.ModelSpec`, `pipeline.stages.STAGES`)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:n])
        if base.with_suffix(".py").is_file():
            return True  # the rest, if any, are attributes of that module
        if base.is_dir():
            init = base / "__init__.py"
            return n == len(parts) or (init.is_file() and parts[n] in bound_names(init))
    return False


def named_paths() -> list[tuple[str, str]]:
    """(where, what) for every path and module the docs and comments name."""
    named = []
    for md in markdown_files():
        for lineno, line in enumerate(md.read_text().splitlines(), 1):
            where = f"{md.relative_to(REPO)}:{lineno}"
            named += [(where, p) for p in paths_in(line)]
            named += [(where, m) for m in MODULE.findall(line)]
    for py in python_files():
        for lineno, text in prose_of_python(py):
            where = f"{py.relative_to(REPO)}:{lineno}"
            named += [(where, p) for p in paths_in(text)]
            named += [(where, m) for m in MODULE.findall(text)]
    return named


def test_the_matcher_finds_paths_and_skips_outputs_placeholders_and_urls():
    text = (
        "see `pipeline/stages/parity.py` and tests/serving/cases.py, then config/torchserve.properties. "
        "Outputs: artifacts/<model>/model.onnx, reports/x.md, `tests/<area>/`, https://x.org/tests/y.py, "
        "../pipeline/z.py; pipeline/stages/{train,trace}.py"
    )
    assert paths_in(text) == [
        "pipeline/stages/parity.py",
        "tests/serving/cases.py",
        "config/torchserve.properties",
        "pipeline/stages/train.py",
        "pipeline/stages/trace.py",
    ]
    assert module_exists("pipeline.spec.ModelSpec") and module_exists("pipeline.stages.STAGES") and module_exists("tests.zoo")
    assert not module_exists("pipeline.loadgen") and not module_exists("pipeline.stages.no_such_stage")


def test_every_path_the_docs_and_comments_name_exists():
    missing = []
    for where, name in named_paths():
        exists = (REPO / name).exists() if "/" in name else module_exists(name)
        if not exists:
            missing.append(f"{where}: {name}")
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)


def _first_python_block(text: str, heading: str) -> str:
    section = text.split(f"\n{heading}\n", 1)
    assert len(section) == 2, f"no {heading!r} section"
    block = re.search(r"```python\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    assert block, f"the {heading!r} section has no ```python block"
    return block.group(1)


def test_the_model_spec_page_shows_the_readme_model_file():
    # tests/test_readme_model.py takes the README's block through the chain; the page must show the same file.
    readme = _first_python_block((REPO / "README.md").read_text(), "## Bring your own model")
    page = _first_python_block((REPO / "docs" / "model-spec.md").read_text(), "## A complete minimal model file")
    assert page == readme, "docs/model-spec.md's model file differs from README.md's: copy the README's block"


def test_cli_reference_is_up_to_date():
    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "scripts" / "cli_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs" / "cli.md").read_text() == module.render(), "docs/cli.md is out of date: run python scripts/cli_reference.py"
