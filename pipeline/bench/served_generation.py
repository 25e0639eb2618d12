"""Served generation benchmark: a text-generation model streamed by TorchServe and by Ray Serve, through the OpenAI API.

Part of `python -m pipeline bench --model hf:FOLDER` (pipeline.bench.generation). For each server
that can run here (TorchServe needs java; Ray Serve its extra), the verified archive is served on
127.0.0.1, warmed up, then for each stream count C, C clients (asyncio tasks sharing one official
`openai.AsyncOpenAI` client) each loop streaming `/v1/completions` requests (temperature 0, a fixed
max_tokens, the usage chunk asked for) until the level's seconds are over; a request in flight then
finishes. The prompts are `generation.prompt_rows`, one per client, decoded to text. A load phase
follows: `load_streams` clients for `load_seconds`, for its errors and the servers' peak memory.
The in-process TTFT of client 0's prompt (the project's loop over ONNX Runtime, batch 1, the ids the
server's tokenizer gives the text) is the reference for the served TTFT at one stream.

Definitions, per request:
- TTFT: from the request being sent to the first chunk carrying text (tokenizing, HTTP, the
  queue, the prefill and the detokenizer on the way);
- ITL: the gaps between consecutive chunks carrying text (a chunk is one decode step's text; a
  step whose bytes end inside a UTF-8 character sends nothing, and its gap joins the next);
- tokens: completion_tokens of the stream's usage chunk.
Per stream count: TTFT and ITL p50/p99 by numpy.percentile over every request (ITL pooled);
tokens/s = all completion tokens / the wall time from the first request sent to the last answer
read. Peak memory: the largest sum of RSS over the server's processes, sampled every
`SAMPLE_S` (shared pages count once per process, so the sum overstates what the tree holds).
The clients run in this process, on the same CPU as the server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psutil

from pipeline.bench.generation import number_or_dash, prompt_rows
from pipeline.errors import PipelineError
from pipeline.serving.common.processes import wait_ended
from pipeline.settings import Settings
from pipeline.spec import Generation

STAGE = "bench"
SERVERS = ("torchserve", "ray")
SAMPLE_S = 0.25  # how often the server's memory is read
REFRESH_S = 2.0  # how often its process list is read again (a full process scan; workers may come and go)
TTFT_TARGET = 1.2  # served TTFT at one stream over the in-process TTFT: what the issue asks for


@dataclass(frozen=True)
class ServedSettings:
    """What the served benchmark measures; recorded in the report."""

    servers: tuple[str, ...] = SERVERS
    streams: tuple[int, ...] = (1, 4, 16)
    seconds: float = 10.0  # per stream count: no client starts a request past them
    requests: int | None = None  # per client and stream count, where a count should end a level first
    load_streams: int = 16
    load_seconds: float = 60.0  # 0: no load phase
    prompt_tokens: int = 32
    max_tokens: int = 64
    in_process_repeats: int = 5
    threads: int = psutil.cpu_count(logical=False) or 1  # the in-process reference's ONNX Runtime threads
    request_timeout_s: float = 120.0
    start_timeout_s: float = 180.0


@dataclass
class Request:
    """One streamed request as its client saw it."""

    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    tokens: int = 0
    prompt_tokens: int | None = None
    text_chunks: int = 0
    finish_reason: str | None = None
    error: str | None = None


def check(settings: ServedSettings, gen: Generation) -> None:
    """Refuse what cannot be measured before any server starts."""
    unknown = [s for s in settings.servers if s not in SERVERS]
    if unknown:
        raise PipelineError(STAGE, f"unknown server(s) {unknown}", f"choose from {', '.join(SERVERS)}")
    if not settings.streams or min(settings.streams) < 1 or settings.load_streams < 1:
        raise PipelineError(STAGE, "stream counts must be positive", "e.g. --concurrency 1,4,16")
    if settings.seconds <= 0 or settings.load_seconds < 0 or (settings.requests is not None and settings.requests < 1):
        raise PipelineError(STAGE, "--served-seconds must be positive and --load-seconds at least 0", "e.g. --served-seconds 10")
    if not 1 <= settings.max_tokens <= gen.max_new_tokens:
        raise PipelineError(STAGE, f"max_tokens {settings.max_tokens}, the model's cap is {gen.max_new_tokens}", "use fewer --new-tokens")
    if settings.prompt_tokens + settings.max_tokens > gen.max_length:
        raise PipelineError(
            STAGE,
            f"a served prompt of {settings.prompt_tokens} tokens plus {settings.max_tokens} new ones is past the model's "
            f"{gen.max_length} positions",
            "use a shorter first --prompt-lengths or fewer --new-tokens",
        )


def prompts(tokenizer, gen: Generation, settings: ServedSettings) -> list[str]:
    """One prompt per client, `generation.prompt_rows` decoded to text (the BOS left to the server's tokenizer)."""
    count = max(*settings.streams, settings.load_streams)
    rows = prompt_rows(tokenizer, gen, settings.prompt_tokens, count)
    return [tokenizer.decode([int(t) for t in row if t != gen.bos_id], skip_special_tokens=True) for row in rows]


def in_process_ttft(settings: ServedSettings, gen: Generation, tokenizer, onnx_path, texts: list[str]) -> tuple[dict, list[str]]:
    """The project's loop over ONNX Runtime at batch 1, timed as the server is: from the call to its first text.

    A random-weight model answers some prompts with tokens that decode to nothing for a while (a byte
    that starts no whole character): their streams carry no text, and TTFT times a later token. So the
    first prompt whose first greedy token is text goes first, to the one-stream clients; the prompts come
    back in that order."""
    import gc

    from pipeline.generation import text
    from pipeline.generation.engines import OnnxEngine
    from pipeline.runtimes.session import SessionConfig

    engine = OnnxEngine(onnx_path, gen, SessionConfig(device="cpu", threads=settings.threads))
    rows = [text.encode(tokenizer, [t], gen.bos_id)[0] for t in texts]
    first = next((i for i, row in enumerate(rows) if time_to_text(engine, gen, tokenizer, row, 2)[1] == 1), 0)
    texts = [texts[first], *texts[:first], *texts[first + 1 :]]
    row = rows[first]
    time_to_text(engine, gen, tokenizer, row, settings.max_tokens)  # warm-up
    ttft, step = [], None
    for _ in range(settings.in_process_repeats):
        gc.collect()
        seconds, step = time_to_text(engine, gen, tokenizer, row, settings.max_tokens)
        if seconds is not None:
            ttft.append(seconds * 1e3)
    record = {
        "engine": "onnxruntime",
        "prompt_tokens": len(row),
        "prompt_index": first,  # of generation.prompt_rows; 0 unless earlier prompts' first tokens made no text
        "first_text_at_token": step,
        "threads": settings.threads,
        "repeats": settings.in_process_repeats,
        "ttft_ms_p50": float(np.percentile(ttft, 50)) if ttft else None,
        "ttft_ms_runs": ttft,
    }
    return record, texts


def time_to_text(engine, gen: Generation, tokenizer, row: list[int], max_tokens: int) -> tuple[float | None, int | None]:
    """Seconds from the call to the first step that hands out text, and which token that was (None, None: none did)."""
    from pipeline.generation.loop import Options, Run

    start = time.perf_counter()
    for step, deltas in enumerate(Run(engine, gen, tokenizer, [row], Options(max_new_tokens=max_tokens)), start=1):
        if any(d.text for d in deltas):
            return time.perf_counter() - start, step
    return None, None


# The clients


async def one_request(client, model: str, prompt: str, max_tokens: int) -> Request:
    """One streamed completion; an error is recorded, not raised (a benchmark counts them)."""
    import openai

    out = Request()
    sent = time.perf_counter()
    last = None
    try:
        stream = await client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},  # every request max_tokens long (vLLM's extension, which both servers take)
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                if last is None:
                    out.ttft_s = now - sent
                else:
                    out.gaps_s.append(now - last)
                last = now
                out.text_chunks += 1
            if chunk.choices and chunk.choices[0].finish_reason:
                out.finish_reason = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                out.tokens, out.prompt_tokens = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
    except openai.APIError as exc:  # the client wraps its transport's errors in these, mid-stream too
        out.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return out
    if out.prompt_tokens is None:
        out.error = "the stream ended without the usage chunk asked for (stream_options include_usage)"
    return out


async def client_loop(client, model: str, prompt: str, max_tokens: int, deadline: float, cap: int | None) -> list[Request]:
    """Requests one after another until the deadline or the cap; at least one."""
    done: list[Request] = []
    while (cap is None or len(done) < cap) and (not done or time.perf_counter() < deadline):
        done.append(await one_request(client, model, prompt, max_tokens))
    return done


@dataclass
class Driven:
    """What the clients of one level did: every request, the wall seconds from the first sent to the last answer read, and
    the CPU seconds this process (the clients, on the server's machine) spent meanwhile."""

    requests: list[Request]
    wall_s: float
    client_cpu_s: float


def _cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


async def drive(url: str, token: str, model: str, prompts: Sequence[str], seconds: float, cap: int | None, settings: ServedSettings):
    """`len(prompts)` clients looping requests for `seconds` (each one at least)."""
    import openai

    # trust_env off: 127.0.0.1 only, whatever proxy the environment names.
    http = openai.DefaultAsyncHttpxClient(trust_env=False)
    async with openai.AsyncOpenAI(
        api_key=token, base_url=f"{url}/v1", max_retries=0, timeout=settings.request_timeout_s, http_client=http
    ) as client:
        start, cpu = time.perf_counter(), _cpu_s()
        deadline = start + seconds
        loops = [client_loop(client, model, p, settings.max_tokens, deadline, cap) for p in prompts]
        per_client = await asyncio.gather(*loops)
        wall, cpu = time.perf_counter() - start, _cpu_s() - cpu
    return Driven([r for done in per_client for r in done], wall, cpu)


class PeakMemory:
    """The largest sum of RSS over a process tree, sampled in a thread while the `with` block runs."""

    def __init__(self, find: Callable[[], list[psutil.Process]]):
        self.find, self.peak, self.last, self.most_processes = find, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        procs, found_at = self.find(), time.monotonic()
        while True:
            if time.monotonic() - found_at > REFRESH_S:
                procs, found_at = self.find(), time.monotonic()
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.last, self.peak, self.most_processes = total, max(self.peak, total), max(self.most_processes, len(procs))
            if self._stop.wait(SAMPLE_S):
                return


def tree(info) -> list[psutil.Process]:
    """The server's processes: those its record finds (pipeline.serving.*.server's `processes`) and the launcher's descendants."""
    found = {p.pid: p for p in info.processes()}
    if getattr(info, "pid", None) and psutil.pid_exists(info.pid):
        try:
            found.update({p.pid: p for p in psutil.Process(info.pid).children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def level_stats(streams: int, driven: Driven, memory: PeakMemory) -> dict:
    """One flat record per stream count (or the load phase)."""
    requests, wall = driven.requests, driven.wall_s
    ok = [r for r in requests if r.error is None]
    failed = [r for r in requests if r.error is not None]
    ttft = np.asarray([r.ttft_s for r in ok if r.ttft_s is not None]) * 1e3
    gaps = np.asarray([g for r in ok for g in r.gaps_s]) * 1e3
    tokens = sum(r.tokens for r in ok)

    def pct(a: np.ndarray, q: float) -> float | None:
        return float(np.percentile(a, q)) if a.size else None

    return {
        "streams": streams,
        "seconds": wall,
        "requests": len(requests),
        "completed": len(ok),
        "errors": len(failed),
        "first_error": failed[0].error if failed else None,
        "completion_tokens": tokens,
        "tokens_per_request": dict(sorted(Counter(str(r.tokens) for r in ok).items())),
        "finish_reasons": dict(Counter(str(r.finish_reason) for r in ok)),
        "text_chunks": sum(r.text_chunks for r in ok),
        "requests_without_text": sum(r.ttft_s is None for r in ok),  # no TTFT, no ITL: tokens that decoded to nothing
        "prompt_tokens": sorted({r.prompt_tokens for r in ok if r.prompt_tokens is not None}),
        "tokens_per_s": tokens / wall if wall > 0 else None,
        "ttft_ms_p50": pct(ttft, 50),
        "ttft_ms_p99": pct(ttft, 99),
        "itl_ms_p50": pct(gaps, 50),
        "itl_ms_p99": pct(gaps, 99),
        "peak_rss_mib": memory.peak / 2**20,
        "end_rss_mib": memory.last / 2**20,
        "server_processes": memory.most_processes,
        # One asyncio loop: near 100 %, the clients hold a core and the figures are theirs as much as the server's.
        "client_cpu_percent": 100 * driven.client_cpu_s / wall if wall > 0 else None,
    }


# The servers


def unavailable(server: str) -> str | None:
    """Why `server` cannot run on this machine (None: it can)."""
    if server == "torchserve" and shutil.which("java") is None:
        return "TorchServe's frontend needs java (11 or newer), not found: sudo apt-get install -y openjdk-17-jre-headless"
    if server == "ray" and (importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None):
        return "Ray Serve is not installed: pip install -c constraints.txt -e '.[ray]' (make serve-ray does it)"
    return None


def backend(server: str):
    if server == "torchserve":
        from pipeline.serving.torchserve import server as torchserve

        return torchserve
    from pipeline.serving.ray import server as ray

    return ray


def measure_server(name: str, model_settings: Settings, settings: ServedSettings, texts: list[str], bar) -> dict:
    """Start one server, measure it, stop it; the processes it had that are still running after the stop are named."""
    module = backend(name)
    started = time.perf_counter()
    info = module.start(model_settings, auto_ports=True, timeout=settings.start_timeout_s)
    seen: dict[int, psutil.Process] = {}

    def find() -> list[psutil.Process]:
        procs = tree(info)
        seen.update({p.pid: p for p in procs})
        return procs

    find()
    record: dict[str, Any] = {"server": name, "start_s": time.perf_counter() - started, "model": info.model}
    try:
        record |= measure_levels(name, info, find, settings, texts, bar)
    finally:
        module.stop(model_settings)
        alive = wait_ended(seen.values(), 10)
        record["left_running"] = [{"pid": p.pid, "cmdline": " ".join(_cmdline(p))[:200]} for p in alive]
    record["peak_rss_mib"] = max(lv["peak_rss_mib"] for lv in [*record["levels"], *([record["load"]] if "load" in record else [])])
    return record


def measure_levels(name: str, info, find: Callable[[], list[psutil.Process]], settings: ServedSettings, texts: list[str], bar) -> dict:
    """A warm-up, each stream count in turn, then the load phase, against a running server."""
    url, token, model = info.inference, info.token(), info.model

    def clients(count: int, seconds: float, cap: int | None) -> Driven:
        return asyncio.run(drive(url, token, model, texts[:count], seconds, cap, settings))

    # Untimed: one request alone, then one each at the highest stream count (the batch shapes to come).
    warm = [*clients(1, 0.0, 1).requests, *clients(max(settings.streams), 0.0, 1).requests]
    out: dict[str, Any] = {"warmup_errors": [r.error for r in warm if r.error], "levels": []}
    for streams in settings.streams:
        bar.set_postfix_str(f"{name}: {streams} stream(s)")
        with PeakMemory(find) as memory:
            driven = clients(streams, settings.seconds, settings.requests)
        out["levels"].append(level_stats(streams, driven, memory))
        bar.update(1)
    if settings.load_seconds > 0:
        bar.set_postfix_str(f"{name}: load, {settings.load_streams} streams")
        start_rss = sum(_rss(p) for p in find()) / 2**20
        with PeakMemory(find) as memory:
            driven = clients(settings.load_streams, settings.load_seconds, None)
        out["load"] = {**level_stats(settings.load_streams, driven, memory), "start_rss_mib": start_rss}
        bar.update(1)
    return out


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def ttft_ratio(record: dict, in_process: dict) -> float | None:
    one = next((lv for lv in record["levels"] if lv["streams"] == 1), None)
    if one is None or one["ttft_ms_p50"] is None or not in_process["ttft_ms_p50"]:
        return None
    return one["ttft_ms_p50"] / in_process["ttft_ms_p50"]


def run(settings: ServedSettings, model_settings: Settings, gen: Generation, onnx_path) -> dict:
    """Every available server in turn; the report's "served" section."""
    from tqdm import tqdm

    from pipeline.generation import text

    check(settings, gen)
    tokenizer = text.load(gen.tokenizer)
    in_process, texts = in_process_ttft(settings, gen, tokenizer, onnx_path, prompts(tokenizer, gen, settings))
    out: dict[str, Any] = {
        "settings": asdict(settings),
        "definitions": DEFINITIONS,
        "ttft_target": TTFT_TARGET,
        "prompt_chars": len(texts[0]),
        "in_process": in_process,
        "servers": [],
        "skipped": [],
        "failures": [],
    }
    runnable = []
    for server in settings.servers:
        reason = unavailable(server)
        if reason:
            out["skipped"].append({"server": server, "reason": reason})
        else:
            runnable.append(server)
    steps = len(runnable) * (len(settings.streams) + (settings.load_seconds > 0))
    with tqdm(total=steps, desc="bench served", unit="level", disable=None) as bar:
        for server in runnable:
            try:
                record = measure_server(server, model_settings, settings, texts, bar)
            except PipelineError as exc:
                out["failures"].append({"server": server, "error": " ".join(str(exc).split())[:600]})
                continue
            record["ttft_vs_in_process"] = ttft_ratio(record, out["in_process"])
            out["servers"].append(record)
    return out


DEFINITIONS = {
    "ttft_ms": "from the request sent to the first chunk carrying text; p50 and p99 over every request of the level (numpy.percentile)",
    "itl_ms": "the gaps between consecutive chunks carrying text, pooled over every request of the level; chunks the client "
    "reads back to back (a client behind its stream) show as gaps near 0",
    "tokens_per_s": "all completion tokens (the usage chunks) / the wall time from the first request sent to the last answer read",
    "peak_rss_mib": "the largest sum of RSS over the server's processes, sampled every 0.25 s (shared pages counted once per process)",
    "ttft_vs_in_process": "the served TTFT p50 at one stream over the in-process TTFT p50 of the same prompt's ids at batch 1",
    "client_cpu_percent": "CPU seconds of the benchmark's own process (the clients' one asyncio loop) over the level's wall time",
    "length": "every request asks for max_tokens with EOS ignored (vLLM's ignore_eos extension, which both servers take)",
}


# The report


def _level_row(label: str, lv: dict) -> str:
    errors = f"{lv['errors']}" + (f" ({lv['first_error']})" if lv["first_error"] else "")
    return (
        f"| {label} | {lv['requests']} | {number_or_dash(lv['ttft_ms_p50'])} | {number_or_dash(lv['ttft_ms_p99'])} | {number_or_dash(lv['itl_ms_p50'], 2)} | "
        f"{number_or_dash(lv['itl_ms_p99'], 2)} | {number_or_dash(lv['tokens_per_s'])} | {errors} | {lv['peak_rss_mib']:.0f} | "
        f"{number_or_dash(lv['client_cpu_percent'], 0)} |"
    )


def markdown(served: dict, machine: str) -> list[str]:
    """The served section of latency.md: a table per server, the TTFT ratio at one stream, the load phase."""
    lines = _intro(served, machine)
    for record in served["servers"]:
        lines += _server_section(record, served["ttft_target"])
    lines += [f"- {x['server']}: not measured: {x['reason']}" for x in served["skipped"]]
    lines += [f"- {x['server']}: failed: {x['error']}" for x in served["failures"]]
    return [*lines, ""]


def _intro(served: dict, machine: str) -> list[str]:
    """How the served figures were taken, what each column means, and the in-process TTFT they are held against."""
    s, ref = served["settings"], served["in_process"]
    return [
        "## Served: TorchServe and Ray Serve, the OpenAI API streamed",
        "",
        f"On {machine}; the clients ran on the same machine. Each of C clients looped streaming `/v1/completions` requests "
        f"(official openai client, temperature 0, max_tokens {s['max_tokens']}, a prompt of {ref['prompt_tokens']} tokens each) "
        f"for {s['seconds']:g} s per stream count, after a warm-up.",
        "",
        f"- TTFT: {DEFINITIONS['ttft_ms']}. ITL: {DEFINITIONS['itl_ms']}.",
        f"- tokens/s: {DEFINITIONS['tokens_per_s']}; {DEFINITIONS['length']}. Peak memory: {DEFINITIONS['peak_rss_mib']}.",
        f"- client CPU %: {DEFINITIONS['client_cpu_percent']}; near 100 the clients, not the server, set the pace.",
        f"- In process ({ref['engine']}, batch 1, {ref['threads']} thread(s), the one-stream client's prompt's ids, to its first text): "
        f"TTFT p50 {number_or_dash(ref['ttft_ms_p50'])} ms over {ref['repeats']} runs; "
        + (
            "that prompt's first greedy token is text."
            if ref["first_text_at_token"] == 1
            else f"that prompt's first text came with token {ref['first_text_at_token']} (no prompt's first token made text)."
        )
        + (
            f" The prompts before it ({ref['prompt_index']}) answer with tokens that first decode to nothing."
            if ref["prompt_index"]
            else ""
        ),
        "",
    ]


def _server_section(record: dict, target: float) -> list[str]:
    """One server's table (a row per stream count, and the load phase's), then its load phase, silent requests and leftovers."""
    ratio = record["ttft_vs_in_process"]
    verdict = "" if ratio is None else f" ({'within' if ratio <= target else 'over'} the {target:g}× target)"
    lines = [
        f"### {record['server']}",
        "",
        f"Served TTFT at one stream: **{number_or_dash(ratio, 2)}×** the in-process TTFT{verdict}. Started in {record['start_s']:.1f} s.",
        "",
        "| streams | requests | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | tokens/s | errors | peak memory MiB | client CPU % |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        *(_level_row(str(lv["streams"]), lv) for lv in record["levels"]),
    ]
    load = record.get("load")
    if load:
        lines.append(_level_row(f"load: {load['streams']} for {load['seconds']:.0f} s", load))
    lines.append("")
    if load:
        lines += [
            f"Load phase: {load['errors']} error(s) in {load['requests']} requests; server memory {load['start_rss_mib']:.0f} MiB "
            f"before, peak {load['peak_rss_mib']:.0f} MiB, {load['end_rss_mib']:.0f} MiB at the end.",
            "",
        ]
    silent = [
        (
            lv["requests_without_text"],
            f"{lv['requests_without_text']} of {lv['requests']} at {lv['streams']} stream{'s' if lv['streams'] > 1 else ''}",
        )
        for lv in record["levels"]
    ]
    silent += [(load["requests_without_text"], f"{load['requests_without_text']} of {load['requests']} in the load phase")] if load else []
    if any(n for n, _ in silent):
        lines += [
            f"Requests whose answer decoded to no text (no TTFT, no ITL; their tokens count): {', '.join(t for _, t in silent)}.",
            "",
        ]
    if record["left_running"]:
        lines += [f"Left running after stop: {record['left_running']}", ""]
    return lines


def console_lines(served: dict) -> list[str]:
    out = []
    for record in served["servers"]:
        figures = ", ".join(
            f"{lv['streams']}: TTFT p50 {number_or_dash(lv['ttft_ms_p50'])} ms, {number_or_dash(lv['tokens_per_s'])} tokens/s"
            for lv in record["levels"]
        )
        load = record.get("load")
        out.append(
            f"  served {record['server']}: {figures}; TTFT {number_or_dash(record['ttft_vs_in_process'], 2)}x in-process at 1 stream"
            + (f"; load {load['streams']} streams {load['seconds']:.0f} s: {load['errors']} errors" if load else "")
            + f"; peak {record['peak_rss_mib']:.0f} MiB"
        )
    out += [f"  served {x['server']}: not measured: {x['reason']}" for x in served["skipped"]]
    out += [f"  served {x['server']}: failed: {x['error']}" for x in served["failures"]]
    return out
