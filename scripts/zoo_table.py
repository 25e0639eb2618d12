"""Run the model zoo and write its table into docs/model-spec.md ("What goes through") and reports/zoo.json.

python scripts/zoo_table.py            # from the project root, in the project's environment
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.zoo lives beside the package, not in it

from tests.zoo import matrix  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="zoo-") as tmp:
        rows = matrix.run_all(Path(tmp))
    page = matrix.PAGE
    text = page.read_text()
    page.write_text(text.replace(matrix.page_table(text), matrix.render(rows)))
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "zoo.json").write_text(json.dumps(matrix.to_json(rows), indent=2) + "\n")
    for r in rows:
        print(f"{'✓' if r.through else '✗'} {r.model:<28} {'' if r.through else f'[{r.stage}] {r.reason}'}")
    print(f"{sum(r.through for r in rows)} of {len(rows)} go through; {page.relative_to(ROOT)} and reports/zoo.json updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
