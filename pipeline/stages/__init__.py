"""The six stages, each one module with one verb, `run(settings) -> StageResult`.

They meet only through files and the manifest: train writes the checkpoint, trace the
TorchScript module, export the ONNX graph, pt2 the AOTInductor package, parity the gate's
report, package the archive.
`STAGES` lists them in the order `python -m pipeline all` runs them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from pipeline.settings import Settings, StageResult
from pipeline.stages import export, package, parity, pt2, trace, train

STAGES: dict[str, Callable[[Settings], StageResult]] = {
    "train": train.run,
    "trace": trace.run,
    "export": export.run,
    "pt2": pt2.run,
    "parity": parity.run,
    "package": package.run,
}


def run_all(settings: Settings) -> list[StageResult]:
    """Every stage in order; each skips itself when its inputs and settings are unchanged."""
    results = []
    for stage in STAGES.values():
        results.append(stage(settings))
        gc.collect()  # a traced module keeps its model in a reference cycle until collected
    return results
