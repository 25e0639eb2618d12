"""Cold start of one engine in a fresh process: import, load, first inference.

Run by the benchmark as `python -m pipeline.bench.cold JOB.json`; prints one JSON
object. Nothing heavy is imported at module level, so the import time measured is
the runtime's own (ONNX Runtime and the session factory do not import torch on the CPU). The parent has
already verified the artifacts' hashes and wrote the batch-1 inputs to an .npz.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(job_path: str) -> int:
    """One cold start, timed as it happens: imports, then loading, then the first inference, each engine's
    own way. Kept as one sequence so the three clocks read in the order they are taken."""
    with open(job_path) as f:
        job = json.load(f)
    engine, device = job["engine"], job["device"]
    t0 = time.perf_counter()
    if engine == "openvino":
        import openvino  # noqa: F401

        from pipeline.bench.engines import openvino_compiled
    elif engine.startswith("onnxruntime"):
        import onnxruntime  # noqa: F401

        if device == "cuda":
            import torch
        # The project's one session factory, as the handler uses it (it imports onnx for
        # the external-data check, which a served cold start pays too).
        from pipeline.runtimes.session import SessionConfig, create_session
    else:
        import torch
    import numpy as np

    t1 = time.perf_counter()
    with np.load(job["feed"]) as data:
        feed = {name: data[name] for name in job["inputs"]}
    if engine == "openvino":
        compiled = openvino_compiled(Path(job["onnx"]), job["threads"])
        provider = "OpenVINO CPU"
        t2 = time.perf_counter()
        compiled(feed)
    elif engine.startswith("onnxruntime"):
        config = SessionConfig(**job["session"])
        session = create_session(job["onnx"], config)
        provider = session.get_providers()[0]
        t2 = time.perf_counter()
        session.run(None, feed)
    else:
        torch.set_num_threads(job["threads"])
        if engine == "torchscript":
            module = torch.jit.load(job["torchscript"], map_location=device)
        elif engine == "aotinductor":
            module = torch._inductor.aoti_load_package(job["pt2"])
        else:
            from pipeline.artifacts import checkpoint
            from pipeline.artifacts.manifest import Manifest
            from pipeline.models import load_spec

            spec = load_spec(job["model"])
            module, _ = checkpoint.load_model(Manifest(job["root"], spec.name), spec, "bench")
            module = module.to(device)
            if engine.startswith("torch.compile"):
                module = torch.compile(module, mode="max-autotune" if engine.endswith("max-autotune") else None)
        provider = f"torch {device}"
        t2 = time.perf_counter()
        args = [torch.from_numpy(feed[name]).to(device) for name in job["inputs"]]
        with torch.inference_mode():
            module(*args)
        if device == "cuda":
            torch.cuda.synchronize()
    t3 = time.perf_counter()
    print(
        json.dumps(
            {
                "engine": engine,
                "device": device,
                "provider": provider,
                "session": job["session"],
                "import_s": t1 - t0,
                "load_s": t2 - t1,
                "first_inference_s": t3 - t2,
                "total_s": t3 - t0,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
