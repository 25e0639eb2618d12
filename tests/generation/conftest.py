from __future__ import annotations

from pathlib import Path

import pytest

from tests.generation.checkpoints import run_chain, save_decoder


@pytest.fixture(scope="session")
def small_llama(tmp_path_factory) -> tuple[Path, Path]:
    """A small Llama through the chain, once for every module here: (its checkpoint folder, the project root).

    The root is short: TorchServe's sockets live under it."""
    root = tmp_path_factory.mktemp("gen")
    folder = save_decoder("llama", root / "llama")
    run_chain(f"hf:{folder}", root / "p")
    return folder, root / "p"
