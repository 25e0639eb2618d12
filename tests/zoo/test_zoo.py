"""The model zoo: standard architectures through every stage and the handler, and the docs' table of them.

Marked `zoo` (and `slow`): `make test-fast` skips them; `make test` runs them all.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO
from tests.zoo import matrix

pytestmark = [pytest.mark.slow, pytest.mark.zoo]


@pytest.fixture(scope="module")
def rows(zoo) -> dict[str, matrix.Row]:
    return {r.model: r for r in matrix.from_json(json.loads((zoo / matrix.ROWS).read_text()))}


@pytest.mark.parametrize("model", matrix.ZOO)
def test_architecture_goes_through_or_says_why(rows, model):
    row = rows[model]
    if row.through:
        assert row.worst_abs is not None and row.reason is None
    else:
        # A refusal names its stage, the reason and the fix; earlier stages passed.
        assert row.stage and row.reason and row.fix, row
        before = list(matrix.COLUMNS)[: list(matrix.COLUMNS).index(row.stage)]
        assert all(row.outcomes[c] == "pass" for c in before), row


def test_at_least_nine_in_ten_go_through_with_every_attention_recurrent_and_norm_row(rows):
    through = [r for r in rows.values() if r.through]
    assert len(through) >= 0.9 * len(rows), [(r.model, r.stage, r.reason) for r in rows.values() if not r.through]
    must = [m for m in rows if m.startswith(("transformer", "mha", "sdpa", "lstm", "gru")) or m.endswith("norm")]
    assert len(must) >= 10 and all(rows[m].through for m in must), [(m, rows[m].reason) for m in must if not rows[m].through]


def test_docs_table_matches_the_matrix(rows):
    page = matrix.PAGE.read_text()
    fresh = matrix.render([rows[m] for m in matrix.ZOO])
    assert matrix.comparable(matrix.page_table(page)) == matrix.comparable(fresh), (
        f"{matrix.PAGE.relative_to(REPO)}'s 'What goes through' table is out of date: run python scripts/zoo_table.py"
    )
