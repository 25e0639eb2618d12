"""Time onnxruntime-genai's own generation loop; run by the peer's interpreter, not the project's.

`.venv-genai/bin/python genai_worker.py job.json` prints one JSON line. onnxruntime-genai pulls
the CPU `onnxruntime`, which would shadow `onnxruntime-gpu` in the project's venv, so it lives
in a venv of its own (`make genai-peer`) and this file imports nothing from the project.

The job names the folder the model builder wrote, the threads, the new tokens, the repeats and
the cases (prompt rows of one length, a batch). For each case: one warm-up run, then the timed
runs, each greedy with min_length = max_length = prompt + new tokens, so every row gets exactly
the new tokens asked for (genai's search masks EOS until min_length). Times are perf_counter
seconds relative to the start of the run (before the generator is made): one per chosen token.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def set_threads(model_dir: Path, threads: int) -> None:
    """Pin the decoder session's intra-op threads in genai_config.json, as the project pins torch and ONNX Runtime."""
    path = model_dir / "genai_config.json"
    config = json.loads(path.read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    path.write_text(json.dumps(config, indent=4))


def timed_run(og, model, rows, new_tokens: int) -> dict:
    import numpy as np

    ids = np.asarray(rows, dtype=np.int32)
    length = ids.shape[1] + new_tokens
    start = time.perf_counter()
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=length, min_length=length, batch_size=ids.shape[0])
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    times = []
    while not generator.is_done():
        generator.generate_next_token()
        times.append(time.perf_counter() - start)
    new = [len(generator.get_sequence(row)) - ids.shape[1] for row in range(ids.shape[0])]
    return {"token_times": times, "tokens_per_row": new}


def main(job_path: str) -> int:
    import onnxruntime
    import onnxruntime_genai as og

    job = json.loads(Path(job_path).read_text())
    model_dir = Path(job["model_dir"])
    set_threads(model_dir, job["threads"])
    model = og.Model(str(model_dir))
    cases = []
    for case in job["cases"]:
        timed_run(og, model, case["rows"], job["new_tokens"])  # warm-up
        runs = [timed_run(og, model, case["rows"], job["new_tokens"]) for _ in range(job["repeats"])]
        cases.append({"prompt_tokens": len(case["rows"][0]), "batch": len(case["rows"]), "runs": runs})
    versions = {"onnxruntime_genai": og.__version__, "onnxruntime_genai_onnxruntime": onnxruntime.__version__}
    print(json.dumps({"versions": versions, "cases": cases}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
