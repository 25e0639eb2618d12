"""Real models at full size through the whole chain, one after another: time, memory, parity, archive, answer.

python scripts/real_models.py                           # resnet50, vit_b16, bert_base, gpt2, tests/fixtures/wide_mlp.py
python scripts/real_models.py --models resnet50,gpt2 --timeout 3600 --serve
python scripts/real_models.py --decoders /tmp/held --root /tmp/decoders --wait-for "pipeline bench|genai"

Each model runs `python -m pipeline all --model M --force` as a process of its own.
Wall time is measured around that process. Peak memory is the child's own high-water
mark, `ru_maxrss` from `os.wait4` (the kernel's figure for the process, and the largest
of any child it waited for; no sampling, so no peak is missed). Per-stage seconds, and
each stage's `peak_rss_mb` where its record has one, come from
artifacts/<model>/manifest.json; the parity sweep and the worst comparison from
reports/<model>/parity.json; the size from model_store/<model>.mar. Only what this run
wrote is read: an older record is not shown.

--serve then serves each archive that was built (`python -m pipeline serve --ports auto`),
sends one request with the server's token, records the status and the answer's size,
and always stops the server. Writes reports/real-models.md and reports/real-models.json;
each model's output goes to reports/real-models/<name>.log.

A text-generation model (a `*ForCausalLM` folder; the spec's `generation` is set) also gets:
the exporter that made its graph and the graph's size with its weights; parity's greedy rows
(transformers' `generate` against the loop on the graph, at batch 1 and on a left-padded
batch); whether its chain met `--target-s` (10 minutes); and the user's command,
`python -m pipeline generate --json`, run for one prompt and for a left-padded batch of two,
its tokens checked against transformers' own greedy `generate` on the folder
(`from_pretrained`), with the step and margin where they part. `--serve` serves it and sends its
example prompt (`{"text": ..., "max_new_tokens": 16}`).

--decoders FOLDER writes the full-size decoder checkpoints (scripts/make_hf_checkpoint.py:
Qwen2.5-0.5B's shape, a 1.1B Llama, and the held-out Llama and Qwen2) into FOLDER where they
are missing, and runs them. --wait-for PATTERN holds each model until no other process's
command line matches PATTERN (polled every 30 s, 20 minutes at most; then it goes ahead and
the report says so), so that a benchmark beside it is neither disturbed nor disturbs it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from pipeline.artifacts.files import human_bytes  # noqa: E402
from pipeline.artifacts.names import ONNX  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.models import load_spec  # noqa: E402
from pipeline.serving.common.client import http  # noqa: E402
from pipeline.serving.common.preprocess import sample_image  # noqa: E402
from pipeline.settings import Layout  # noqa: E402
from pipeline.spec import HF_PREFIX, ModelSpec, Tolerance  # noqa: E402

DEFAULT_MODELS = ("resnet50", "vit_b16", "bert_base", "gpt2", "tests/fixtures/wide_mlp.py")
STAGES = ("train", "trace", "export", "pt2", "parity", "package")
MEASURED_WITH = "os.wait4 ru_maxrss of the `pipeline all` process (its own peak, and the largest of any child it waited for)"
# --decoders: folder name -> scripts/make_hf_checkpoint.py kind.
DECODERS = {
    "qwen2.5-0.5b": "qwen2.5-0.5b-causal-lm",
    "llama-1.1b": "llama-1.1b-causal-lm",
    "llama": "llama-causal-lm",
    "qwen2": "qwen2-causal-lm",
}
# The user's command is run for one prompt and for a left-padded batch of two (prompts of different lengths).
GENERATE_PROMPTS = ("Once upon a time, in a quiet village by the sea, there lived", "Hi")
WAIT_POLL_S, WAIT_MAX_S = 30.0, 20 * 60.0


@dataclass
class Row:
    """One model's run: what happened, how long, how much memory, what parity and serving said."""

    model: str  # as passed to --model
    name: str = ""  # the spec's name: artifacts/<name>/, model_store/<name>.mar
    status: str = "skipped"  # passed, failed, timeout, skipped
    note: str = ""
    params: int | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_peak_rss_mb: dict[str, float] = field(default_factory=dict)
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    # CPU seconds of the chain, and the 1-minute load average as it ended: wall time that CPU
    # time does not explain, under a load above the cores, is time other work took.
    cpu_s: float | None = None
    load_avg: float | None = None
    returncode: int | None = None
    parity_sweep: Any = None
    parity_worst: dict[str, Any] | None = None
    archive_bytes: int | None = None
    served: dict[str, Any] | None = None
    log: str = ""
    waited: dict[str, Any] | None = None  # --wait-for: how long this model waited, and whether the other work was still running
    # A text-generation model's own fields.
    generation: bool = False
    exporter: str | None = None
    onnx_bytes: int | None = None  # the graph and its external weights
    parity_passed: bool | None = None
    greedy: list[dict[str, Any]] = field(default_factory=list)  # parity.json's greedy rows
    generated: list[dict[str, Any]] = field(default_factory=list)  # `pipeline generate --json` against transformers' generate
    within_target: bool | None = None


def run_measured(cmd: list[str], log: Path, timeout: float) -> tuple[int | None, float, float, bool, float]:
    """(exit code, wall seconds, peak RSS in MB, timed out, CPU seconds) of one child process."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        # A session of its own: on a timeout the whole group (any worker it started) is stopped.
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out, killed_at = False, None
        while True:
            # wait4, not Popen.wait: reaping the child here is what returns its rusage.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            elapsed = time.perf_counter() - started
            if elapsed > timeout and killed_at is None:
                timed_out, killed_at = True, elapsed
                _signal_group(proc.pid, signal.SIGTERM)
            elif killed_at is not None and elapsed > killed_at + 30:
                _signal_group(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped above; Popen must not wait again
    cpu = usage.ru_utime + usage.ru_stime  # its own and its waited-for children's, user and system
    return proc.returncode, wall, usage.ru_maxrss / 1024, timed_out, cpu  # ru_maxrss is in KiB on Linux


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # it ended on its own meanwhile; wait4 reaps it next
        pass


def error_line(log: Path) -> str:
    """The pipeline's own `error: [stage] ...` line from a log, or its last line."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:400]


def fresh(created: str, since: datetime.datetime) -> bool:
    return datetime.datetime.fromisoformat(created) >= since.replace(microsecond=0)


def parameters(checkpoint: Path) -> int:
    """Elements in the checkpoint, read from its header: parameters and buffers, a tied weight once."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)


def read_results(row: Row, layout: Layout, since: datetime.datetime) -> None:
    """Fill in what this run wrote: manifest records, parity report, archive size."""
    manifest = layout.artifacts / "manifest.json"
    records = json.loads(manifest.read_text())["artifacts"] if manifest.exists() else {}
    for rec in records.values():
        if not fresh(rec["created"], since):
            continue
        row.stage_seconds[rec["stage"]] = rec["seconds"]
        # The stage's own peak: a field of the record (0 in older manifests), or of its details.
        peak = rec.get("peak_rss_mb") or rec.get("details", {}).get("peak_rss_mb")
        if peak:
            row.stage_peak_rss_mb[rec["stage"]] = peak
        if rec["stage"] == "train":
            row.params = parameters(layout.root / rec["path"])
    if (graph := records.get(ONNX)) and fresh(graph["created"], since):
        row.exporter = graph.get("details", {}).get("exporter")
        row.onnx_bytes = graph["bytes"] + graph.get("details", {}).get("external_data", {}).get("bytes", 0)
    parity = layout.reports / "parity.json"
    if parity.exists() and parity.stat().st_mtime >= since.timestamp():
        report = json.loads(parity.read_text())
        row.parity_passed = report.get("passed")
        row.greedy = report.get("greedy", [])
        row.parity_worst = report.get("worst")
        row.parity_sweep = report.get("sweep")
        if row.parity_sweep is None:  # older parity stages do not describe their sweep
            results = report.get("results", [])
            row.parity_sweep = {"cases": len({r["case"] for r in results}), "batch_sizes": sorted({r["batch_size"] for r in results})}
    if layout.mar.exists() and layout.mar.stat().st_mtime >= since.timestamp():
        row.archive_bytes = layout.mar.stat().st_size


def request_body(spec: ModelSpec) -> tuple[bytes, str, str]:
    """The body `serve` prints (`ModelSpec.request_example`), or a 640 x 480 JPEG for a model
    that takes images; where it came from; its Content-Type."""
    if spec.image_input is not None:
        return sample_image(np.random.default_rng(0), 640, 480), "a 640x480 JPEG (gradients and noise)", "image/jpeg"
    source = "example_request" if spec.example_request is not None else "generated from sample_inputs(1), rounded to 0.1"
    return json.dumps(spec.request_example(), separators=(",", ":")).encode(), source, "application/json"


def serve_once(spec: ModelSpec, model: str, root: Path, timeout: float) -> dict[str, Any]:
    """Serve the archive, send one request with the token, stop the server whatever happened."""
    pipeline = [sys.executable, "-m", "pipeline"]
    where = ["--model", model, "--root", str(root)]
    body, source, content_type = request_body(spec)
    served: dict[str, Any] = {"request": source, "request_bytes": len(body)}
    t_start = time.perf_counter()
    try:
        started = subprocess.run(
            [*pipeline, "serve", *where, "--ports", "auto", "--timeout", str(timeout)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout + 60,
        )
        served["start_s"] = round(time.perf_counter() - t_start, 1)
        if started.returncode != 0:
            served["error"] = (started.stderr.strip() or started.stdout.strip()).splitlines()[-1][:400]
            return served
        url = next(line.split()[1] for line in started.stdout.splitlines() if line.strip().startswith("URL"))
        token = subprocess.run([*pipeline, "token", *where], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
        t0 = time.perf_counter()
        status, answer = http("POST", url, body, token.stdout.strip(), content_type=content_type, timeout=timeout)
        served.update(status=status, answer_bytes=len(answer), seconds=round(time.perf_counter() - t0, 3))
        if status == 200 and spec.generation is not None:
            served["tokens"] = len(json.loads(answer)["tokens"])
        if status != 200:
            served["error"] = answer[:400].decode(errors="replace")
    except (subprocess.SubprocessError, OSError, StopIteration) as exc:
        served["error"] = f"{type(exc).__name__}: {exc}"[:400]
    finally:
        subprocess.run([*pipeline, "stop", *where], cwd=ROOT, capture_output=True, timeout=180)
    return served


def generate_check(model: str, spec: ModelSpec, root: Path, new_tokens: int, timeout: float) -> list[dict[str, Any]]:
    """`python -m pipeline generate --json` for one prompt and for a left-padded batch of two, each
    against transformers' greedy `generate` on the folder: tokens per prompt, and where they part."""
    runs: list[dict[str, Any]] = []
    for prompts in (GENERATE_PROMPTS[:1], GENERATE_PROMPTS):
        cmd = [sys.executable, "-m", "pipeline", "generate", "--model", model, "--root", str(root), "--json"]
        cmd += [*(a for p in prompts for a in ("--prompt", p)), "--max-new-tokens", str(new_tokens)]
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            runs.append({"prompts": len(prompts), "error": f"no answer within {timeout:g}s"})
            continue
        run: dict[str, Any] = {"prompts": len(prompts), "seconds": round(time.perf_counter() - t0, 1)}
        if done.returncode != 0:
            run["error"] = (done.stderr.strip() or done.stdout.strip() or "(no output)").splitlines()[-1][:400]
        else:
            run["answers"] = [a["tokens"] for a in json.loads(done.stdout.strip().splitlines()[-1])]
            run["tokens"] = [len(a) for a in run["answers"]]
        runs.append(run)
    answered = [r for r in runs if "answers" in r]
    if answered and not model.startswith(HF_PREFIX):
        # A built-in decoder (gpt2) has no checkpoint folder for from_pretrained; parity's greedy rows are
        # its reference (transformers' generate on the same weights, in process).
        for run in answered:
            del run["answers"]
            run.update(rows=[], same=True, passed=True, reference="parity's greedy rows (no folder for from_pretrained)")
        return runs
    if answered:
        reference = TransformersGreedy(model.removeprefix(HF_PREFIX).split("#")[0], spec)
        for run in answered:
            run["rows"] = reference.compare(GENERATE_PROMPTS[: run["prompts"]], run.pop("answers"), new_tokens)
            run["same"] = all(r["same"] for r in run["rows"])
            run["passed"] = all(r["same"] or r["near_tie"] for r in run["rows"])
        del reference
    return runs


class TransformersGreedy:
    """The folder's model as transformers loads it (`from_pretrained`, its own tokenizer padding on
    the left), generating greedily: the reference for the user's command."""

    def __init__(self, folder: str, spec: ModelSpec):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        assert spec.generation is not None
        self.gen, self.tol = spec.generation, spec.tolerance
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        self.tokenizer.pad_token_id = self.gen.pad_id  # masked places: any id does, the loop's for sameness

    def compare(self, prompts: tuple[str, ...], answers: list[list[int]], new_tokens: int) -> list[dict[str, Any]]:
        import torch
        from transformers import GenerationConfig

        feed = self.tokenizer(list(prompts), padding=True, return_tensors="pt")
        config = GenerationConfig(
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=self.gen.pad_id,
            eos_token_id=list(self.gen.eos_ids) or None,
            return_dict_in_generate=True,
            output_logits=True,
        )
        with torch.inference_mode():
            out = self.model.generate(**feed, generation_config=config)
        wants = out.sequences[:, feed["input_ids"].shape[1] :].tolist()
        logits = [step.float().numpy() for step in out.logits]
        return [
            parting(row, until_eos(want, self.gen.eos_ids), got, logits, self.tol) for row, (want, got) in enumerate(zip(wants, answers))
        ]


def parting(row: int, want: list[int], got: list[int], logits: list[np.ndarray], tol: Tolerance) -> dict[str, Any]:
    """Same tokens, or the first new token where `got` parts from `want`, with the reference's margin
    between its two best logits there (`logits`: one [batch, vocab] per step) against `tol`'s bound."""
    parted = next((i for i, (w, g) in enumerate(zip(want, got)) if w != g), None)
    if parted is None and len(want) != len(got):
        parted = min(len(want), len(got))
    if parted is None:
        return {"row": row, "tokens": len(want), "same": True, "near_tie": False}
    step = logits[min(parted, len(logits) - 1)][row].astype(np.float64)
    second, best = np.sort(step)[-2:]
    bound = tol.atol + tol.rtol * abs(best) + tol.scaled * float(np.abs(step).max())
    margin = float(best - second)
    return {
        "row": row,
        "tokens": len(want),
        "same": False,
        "parted_at": parted,
        "margin": margin,
        "bound": bound,
        "near_tie": margin <= 2 * bound,
    }


def until_eos(tokens: list[int], eos: tuple[int, ...]) -> list[int]:
    """The tokens through the first EOS: what the loop answers (generate pads after it)."""
    ends = [i for i, t in enumerate(tokens) if t in eos]
    return tokens[: ends[0] + 1] if ends else tokens


def others_matching(pattern: re.Pattern[str]) -> list[str]:
    """Processes whose command line matches, other than this one and those that started it (whose arguments may hold the pattern)."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] not in mine and pattern.search(command):
            found.append(f"{proc.info['pid']}: {command[:160]}")
    return found


def wait_for_quiet(pattern: re.Pattern[str], poll_s: float = WAIT_POLL_S, most_s: float = WAIT_MAX_S) -> dict[str, Any]:
    """Wait until no other process matches `pattern`, `most_s` at most: the seconds waited, and what still ran if it went ahead."""
    started = time.monotonic()
    while (busy := others_matching(pattern)) and time.monotonic() - started < most_s:
        time.sleep(poll_s)
    return {"pattern": pattern.pattern, "seconds": round(time.monotonic() - started), "went_ahead_beside": busy}


def decoder_models(folder: Path) -> list[str]:
    """The full-size decoder checkpoints in `folder` (written by make_hf_checkpoint.py where missing), as hf: models."""
    models = []
    for name, kind in DECODERS.items():
        out = folder / name
        if not (out / "config.json").is_file():
            subprocess.run([sys.executable, str(ROOT / "scripts" / "make_hf_checkpoint.py"), kind, str(out)], cwd=ROOT, check=True)
        models.append(f"{HF_PREFIX}{out}")
    return models


def run_model(model: str, root: Path, timeout: float, serve: bool, target_s: float = 600.0, new_tokens: int = 32) -> Row:
    row = Row(model=model)
    if not model.startswith(HF_PREFIX) and (model.endswith(".py") or "/" in model):
        # Relative to where the suite runs, else to the checkout (the default list's fixture).
        path = next((p for p in (Path(model).absolute(), ROOT / model) if p.is_file()), Path(model))
        if not path.is_file():
            row.note = f"{model} does not exist"
            return row
        model = str(path)
    try:
        spec = load_spec(model)
    except PipelineError as exc:
        row.status, row.note = "failed", f"spec: {exc}"[:400]
        return row
    row.name = spec.name
    layout = Layout(root, spec.name)
    log = root / "reports" / "real-models" / f"{spec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    row.log = str(log.relative_to(root))
    since = datetime.datetime.now(datetime.timezone.utc)
    cmd = [sys.executable, "-m", "pipeline", "all", "--model", model, "--root", str(root), "--force"]
    row.returncode, row.wall_s, row.peak_rss_mb, timed_out, row.cpu_s = run_measured(cmd, log, timeout)
    row.load_avg = round(os.getloadavg()[0], 1)
    read_results(row, layout, since)
    if timed_out:
        row.status, row.note = "timeout", f"stopped after {timeout:g}s"
    elif row.returncode != 0:
        row.status, row.note = "failed", error_line(log)
    else:
        row.status = "passed"
    row.generation = spec.generation is not None
    if row.generation:
        row.within_target = row.status == "passed" and row.wall_s <= target_s
        if row.status == "passed":
            row.generated = generate_check(model, spec, root, new_tokens, timeout=min(timeout, 900))
    if serve and row.status == "passed":
        row.served = serve_once(spec, model, root, timeout=min(timeout, 600))
    return row


def machine(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    return {
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _size(n: float | None) -> str:
    return "—" if n is None else human_bytes(n)


def _brief(sweep: Any) -> str:
    """The batch sizes parity ran, and the ones its budget left out with the reason's first words."""
    if not isinstance(sweep, dict):
        return "—"
    ran = sweep.get("ran_batch_sizes", sweep.get("batch_sizes", []))
    text = f"{sweep.get('mode', '')} {ran}".strip()
    left = [f"{s['batch']} ({'memory' if 'MiB budget' in s['why'] else 'time'})" for s in sweep.get("skipped", []) if s.get("batch")]
    return text + (f"; left out {', '.join(left)}" if left else "")


def _count(n: int | None) -> str:
    if not n:
        return "—"
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def render(rows: list[Row], info: dict[str, Any]) -> str:
    """real-models.md: the machine, a row per model, the text-generation models, then notes and waits."""
    dirty = " (with uncommitted changes)" if info["uncommitted_changes"] else ""
    lines = [
        "# Real models at full size",
        "",
        f"Machine: {info['cpus']} CPUs, {info['memory_gib']} GiB memory, {info['platform']}, Python {info['python']}; "
        f"commit {info['commit']}{dirty}; {info['date']}.",
        "",
        f"Each model: `python -m pipeline all --model M --force` in its own process. Peak RSS: {MEASURED_WITH}; "
        "a stage's own peak, where its record has one, is in brackets.",
        "",
        f"| model | params | {' | '.join(f'{s} s' for s in STAGES)} | wall s | peak RSS | parity sweep | parity worst | archive | served |",
        "| --- | ---: | " + " ---: |" * len(STAGES) + " ---: | ---: | --- | --- | ---: | --- |",
        *(_model_row(r) for r in rows),
    ]
    lines += render_generation([r for r in rows if r.generation], info["target_s"])
    lines += _notes(rows)
    lines += _waits(rows)
    return "\n".join(lines) + "\n"


def _model_row(r: Row) -> str:
    stages = []
    for s in STAGES:
        cell = f"{r.stage_seconds[s]:.1f}" if s in r.stage_seconds else "—"
        if s in r.stage_peak_rss_mb:
            cell += f" ({_size(r.stage_peak_rss_mb[s] * 2**20)})"
        stages.append(cell)
    w = r.parity_worst
    worst = f"{w['engine']} `{w['output']}` {w['case']}: max abs {w['max_abs']:.2g}, {w['tolerance_used']:.2g}× bound" if w else "—"
    if r.served is None:
        served = "—"
    elif "skipped" in r.served:
        served = "skipped"
    else:
        served = f"{r.served.get('status', 'no answer')}, {_size(r.served.get('answer_bytes'))}"
    cells = [
        f"`{r.name or r.model}`",
        _count(r.params),
        *stages,
        f"{r.wall_s:.1f}" if r.wall_s is not None else "—",
        _size(r.peak_rss_mb * 2**20) if r.peak_rss_mb is not None else "—",
        _brief(r.parity_sweep),
        worst,
        _size(r.archive_bytes),
        served,
    ]
    return "| " + " | ".join(cells) + " |"


def _notes(rows: list[Row]) -> list[str]:
    """A line for each model that did not pass, or whose serve check failed or was skipped."""
    notes = [r for r in rows if r.status != "passed" or (r.served and ("error" in r.served or "skipped" in r.served))]
    if not notes:
        return []
    lines = ["", "Notes:", ""]
    for r in notes:
        answer = r.served or {}
        why = f" Served: {answer['error']}" if "error" in answer else f"; not served: {answer['skipped']}." if "skipped" in answer else ""
        text = r.note + why
        lines.append(
            f"- `{r.name or r.model}` {r.status}{'' if text.startswith(';') else ': '}{text.strip()}"
            + (f" (log: {r.log})" if r.log else "")
        )
    return lines


def _waits(rows: list[Row]) -> list[str]:
    """A line for each model that waited for other work before it ran, or went ahead beside it."""
    waited = [(r, r.waited) for r in rows if r.waited and (r.waited["seconds"] or r.waited["went_ahead_beside"])]
    if not waited:
        return []
    lines = [
        "",
        f"Waited for other work (`{waited[0][1]['pattern']}`, polled every {WAIT_POLL_S:g} s, {WAIT_MAX_S / 60:g} minutes at most):",
        "",
    ]
    for r, w in waited:
        beside = f"; went ahead beside {'; '.join(w['went_ahead_beside'])}" if w["went_ahead_beside"] else ""
        lines.append(f"- `{r.name or r.model}`: waited {w['seconds']} s{beside}")
    return lines


def render_generation(rows: list[Row], target_s: float) -> list[str]:
    """The text-generation models: the target, the exporter and graph, parity's greedy rows, and the user's command."""
    if not rows:
        return []
    lines = [
        "",
        "## Text generation",
        "",
        f"CPU s: the chain's CPU seconds (user and system, its children included; at most {os.cpu_count()}× the wall time here). "
        "Load: the 1-minute load average as the chain ended; above the cores, other work shared them.",
        "",
        "Greedy rows: parity's loop on the ONNX graph against transformers' `generate(do_sample=False)`, "
        "at batch 1 and on a left-padded batch of three prompts. `pipeline generate`: the user's command (`--json`) for one prompt and for a "
        "left-padded batch of two, against transformers' own greedy `generate` on the folder (`from_pretrained`, its tokenizer "
        "padding on the left). Where tokens part: the new token's index, transformers' margin between its two best logits there, "
        "and the bound (a near tie is within twice the bound).",
        "",
        f"| model | wall s | CPU s | load | peak RSS | within {target_s / 60:g} min | exporter | ONNX | parity | greedy b=1 | greedy left-padded | "
        "`pipeline generate` | served |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cells = [
            f"`{r.name or r.model}`",
            f"{r.wall_s:.1f}" if r.wall_s is not None else "—",
            f"{r.cpu_s:.1f}" if r.cpu_s is not None else "—",
            f"{r.load_avg:g}" if r.load_avg is not None else "—",
            _size(r.peak_rss_mb * 2**20) if r.peak_rss_mb is not None else "—",
            "—" if r.within_target is None else "✓ yes" if r.within_target else "✗ no",
            (r.exporter or "—").split(" (")[0],
            _size(r.onnx_bytes),
            "—" if r.parity_passed is None else "✓ passed" if r.parity_passed else "✗ failed",
            _greedy([g for g in r.greedy if "b=1" in g["case"]]),
            _greedy([g for g in r.greedy if "left-padded" in g["case"]]),
            "; ".join(_generated(g) for g in r.generated) or "—",
            _served(r.served),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _served(served: dict[str, Any] | None) -> str:
    """A generation model's served answer: its status and new tokens, or why there is none."""
    if served is None:
        return "—"
    if "error" in served or served.get("status") != 200:
        return f"✗ {served.get('status', 'no answer')}"
    return f"✓ 200 in {served['seconds']:g} s, {served.get('tokens', '?')} new tokens"


def _greedy(rows: list[dict[str, Any]]) -> str:
    """Same tokens in every row, or each row that parted: where, by what margin, near tie or not."""
    if not rows:
        return "—"
    parted = [g for g in rows if not g["same"]]
    tokens = "/".join(str(g["tokens"]) for g in rows)
    if not parted:
        return f"✓ same ({tokens} tokens)" if len(rows) == 1 else f"✓ {len(rows)} of {len(rows)} rows same ({tokens} tokens)"
    return "; ".join(
        f"{'near tie' if g['near_tie'] else '✗ parted'}: row {g['row']} at token {g['parted_at']}, margin {g['margin']:.2g} (bound {g['bound']:.2g})"
        for g in parted
    )


def _generated(run: dict[str, Any]) -> str:
    what = f"b={run['prompts']}"
    if "error" in run:
        return f"{what}: ✗ {run['error']}"
    checked = run.get("reference") or _greedy(run["rows"])
    return f"{what}: {'+'.join(map(str, run['tokens']))} tokens in {run['seconds']:g} s, {checked}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        help=f"comma-separated built-in names, .py paths or hf:FOLDER checkpoints (default: {','.join(DEFAULT_MODELS)}; none with --decoders)",
    )
    parser.add_argument(
        "--decoders",
        type=Path,
        metavar="FOLDER",
        help=f"also the full-size decoders in FOLDER ({', '.join(DECODERS)}), written by make_hf_checkpoint.py where missing",
    )
    parser.add_argument(
        "--target-s", type=float, default=600.0, help="a generation model's chain meets its target within this (default: %(default)s)"
    )
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=32,
        help="new tokens per prompt in a generation model's `pipeline generate` check (default: %(default)s)",
    )
    parser.add_argument(
        "--wait-for",
        metavar="PATTERN",
        help=f"before each model, wait while another process's command line matches this regex (every {WAIT_POLL_S:g} s, "
        f"{WAIT_MAX_S / 60:g} minutes at most), e.g. 'pipeline bench|genai'",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one model's chain may take (default: %(default)s)")
    parser.add_argument("--serve", action="store_true", help="also serve each archive, send one request, and stop it")
    parser.add_argument("--root", type=Path, default=ROOT, help="project folder of artifacts/, reports/ (default: the checkout)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    models = [m for m in (args.models or ("" if args.decoders else ",".join(DEFAULT_MODELS))).split(",") if m]
    if args.decoders:
        models += decoder_models(args.decoders.resolve())
    rows = []
    bar = tqdm(models, desc="real models", unit="model", disable=None)
    for model in bar:
        bar.set_postfix_str(model)
        waited = wait_for_quiet(re.compile(args.wait_for)) if args.wait_for else None
        row = run_model(model, root, args.timeout, args.serve, args.target_s, args.new_tokens)
        row.waited = waited
        rows.append(row)
        measured = f"wall {row.wall_s:.0f}s, peak RSS {_size(row.peak_rss_mb * 2**20)} " if row.wall_s and row.peak_rss_mb else ""
        bar.write(f"{row.status:<8} {row.name or row.model}: {measured}{row.note}")
    info = {**machine(root), "target_s": args.target_s}
    reports = root / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "real-models.json").write_text(
        json.dumps({"machine": info, "peak_rss": MEASURED_WITH, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    (reports / "real-models.md").write_text(render(rows, info))
    print(f"wrote {reports / 'real-models.md'} and {reports / 'real-models.json'}")
    generated = all(g.get("passed") for r in rows for g in r.generated)
    return 0 if all(r.status in ("passed", "skipped") for r in rows) and generated else 1


if __name__ == "__main__":
    sys.exit(main())
