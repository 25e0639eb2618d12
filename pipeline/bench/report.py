"""Render the benchmark's JSON report as tables a person reads, a plot, and a console summary."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipeline.artifacts import files
from pipeline.artifacts.cost import MIN_SWEEP
from pipeline.bench.engines import engines_of

FP32 = frozenset(engines_of("fp32"))


def human_time(ms: float | None) -> str:
    """A time given in ms, in the unit that fits it: 9.9 µs, 1.53 ms, 2.1 s; "—" for none."""
    if ms is None:
        return "—"
    for value, unit in ((ms * 1e3, "µs"), (ms, "ms")):
        if value < 1000:
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{ms / 1e3:.3g} s"


_ms = human_time


def _x(v) -> str:
    return "—" if v is None else f"{v:.2f}×"


def versus(speedup: float | None, other: str) -> str:
    """A speed ratio in words: other's time over this one's, 1.53 ⇒ "1.53× faster than eager", 0.5 ⇒ "2.00× slower than eager"."""
    if speedup is None:
        return "—"
    if round(speedup, 2) == 1.0:
        return f"as fast as {other}"
    return f"{speedup:.2f}× faster than {other}" if speedup > 1 else f"{1 / speedup:.2f}× slower than {other}"


def _is_floor(engine: str) -> bool:
    return engine.startswith("floor:")


def winners(records: list[dict]) -> list[dict]:
    """Per device and batch: the fastest fp32 engine at p50 of all that ran (floors aside; the smaller variants have a
    table of their own), with eager's record beside it. The one computation of "fastest": the report's first table
    and the console both read it."""
    index = {(r["device"], r["batch"], r["engine"]): r for r in records}
    out = []
    for device, batch in dict.fromkeys((r["device"], r["batch"]) for r in records):
        ran = [r for r in records if (r["device"], r["batch"]) == (device, batch) and r["engine"] in FP32]
        if ran:
            out.append(
                {
                    "device": device,
                    "batch": batch,
                    "best": min(ran, key=lambda r: r["p50_ms"]),
                    "eager": index.get((device, batch, "eager")),
                }
            )
    return out


def _environment_lines(env: dict) -> list[str]:
    gpu = (
        f"{env.get('gpu')} (driver {env.get('gpu_driver')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')})" if env.get("gpu") else "none"
    )
    return [
        f"- CPU: {env['cpu']}, {env['physical_cores']} physical / {env['logical_cores']} logical cores, "
        f"{env['memory_gib']} GiB; intra-op threads {env['intra_op_threads']} (torch and ONNX Runtime alike)",
        f"- GPU: {gpu}",
        f"- Python {env['python']}, torch {env['torch']}, onnx {env['onnx']}, onnxruntime {env['onnxruntime']}, "
        f"torchserve {env['torchserve']}; platform {env['platform']}",
    ]


def _variant_lines(variants: list[dict]) -> list[str]:
    """Each gated variant against fp32 ONNX Runtime on its own device: size, task metric, cold start, throughput."""
    batches = sorted({int(b) for v in variants for b in v["throughput_vs_fp32_p50"]})
    lines = [
        "## Smaller variants against fp32 ONNX Runtime",
        "",
        "Each passed its gates (parity with its declared tolerance, and the task metric) before it was packaged; "
        "see reports/<model>/variant-<variant>.md. Throughput is fp32 p50 over the variant's p50 at the same batch "
        "(the same IO binding calls, the same intra-op threads as every engine; see Environment).",
        "",
        "| variant | device | method | size | task metric (fp32 → variant) | cold start (fp32) | "
        + " | ".join(f"throughput b={b}" for b in batches)
        + " |",
        "| --- | --- | --- | ---: | --- | ---: |" + " ---: |" * len(batches),
    ]
    for v in variants:
        task = v["task_metric"]
        metric = f"{task['name']}: {task['fp32']:.4g} → {task[v['variant']]:.4g}" if task else "none declared"
        cold = (
            f"{v['cold_start_s']:.2f} s ({v['fp32_cold_start_s']:.2f} s)"
            if v["cold_start_s"] is not None and v["fp32_cold_start_s"] is not None
            else "—"
        )
        through = {int(b): r for b, r in v["throughput_vs_fp32_p50"].items()}
        lines.append(
            f"| {v['variant']} | {v['device']} | {v['method']} | {v['bytes'] / 1024:.1f} KiB ({v['size_vs_fp32']:.2f}×) | {metric} | {cold} | "
            + " | ".join(_x(through.get(b)) for b in batches)
            + " |"
        )
    return [*lines, ""]


def _header(report: dict) -> list[str]:
    s = report["settings"]
    peak = report.get("peak_memory_mb")
    return [
        f"# Latency: {report['model']}",
        "",
        f"Measured {report['created']} in {report['seconds']:.0f} s by `python -m pipeline bench`"
        + (f", peak resident memory {peak / 1024:.2f} GiB (this process; the servers and cold starts run apart)" if peak else "")
        + f". Same seeded inputs for every engine{_lengths(s)}; {s['warmup_s']} s warm-up per engine and batch excluded; "
        f"about {s['budget_s']} s of timed calls per engine and batch, in {s['rounds']} interleaved rounds "
        "(engine order shuffled each round); GPU calls synchronised. Times are per call, at p50 unless a column says otherwise.",
        "",
        *_winner_table(report),
        "## Environment",
        *_environment_lines(report["environment"]),
        "",
    ]


def _winner_table(report: dict) -> list[str]:
    """The report's first table: the fastest engine per device and batch, its time, and eager's."""
    rows = winners(report["in_process"])
    if not rows:
        return []
    lines = [
        "## The fastest fp32 engine (p50; lower time is faster)",
        "",
        "| device | batch | fastest | its time | eager's time | against eager |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for w in rows:
        best, eager = w["best"], w["eager"]
        speedup = eager["p50_ms"] / best["p50_ms"] if eager else None
        lines.append(
            f"| {w['device']} | {w['batch']} | **{best['engine']}** | {_ms(best['p50_ms'])} | "
            f"{_ms(eager['p50_ms'] if eager else None)} | {versus(speedup, 'eager')} |"
        )
    return [*lines, ""]


def _lengths(s: dict) -> str:
    stretched = ", ".join(f"{name} = {n}" for name, n in sorted((s.get("lengths") or {}).items()))
    return f", in process at {stretched} (the spec's sample inputs repeated along the axis)" if stretched else ""


def _variants(report: dict) -> list[str]:
    return _variant_lines(report["variants"]) if report.get("variants") else []


def _winners(report: dict) -> list[str]:
    """Per device, batch and precision: the fastest ONNX Runtime engine against the fastest PyTorch engine."""
    if not report.get("verdicts"):
        return []
    lines = [
        "## ONNX Runtime against PyTorch, at p50",
        "",
        "The fastest ONNX Runtime engine against the fastest PyTorch engine of the same precision; the fastest fp32 "
        "engine of all (OpenVINO included) is in the first table.",
        "",
        "| device | batch | precision | fastest ONNX Runtime | fastest PyTorch | the faster |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for v in report["verdicts"]:
        loser = v["pytorch"] if v["winner"] == "ONNX Runtime" else v["onnxruntime"]
        lines.append(
            f"| {v['device']} | {v['batch']} | {v.get('precision', 'fp32')} | {v['onnxruntime']} | {v['pytorch']} | "
            f"{v['winner']} ({v['winner_engine']}), {versus(v['by'], loser)} |"
        )
    lines.append("")
    sessions = report.get("sessions") or {}
    if sessions:
        described = "; ".join(f"{d}: {s}" for d, s in sessions.items())
        lines += [f"ONNX Runtime sessions (every ORT engine on a device, floors included): {described}.", ""]
    return lines


def _sweep(report: dict) -> list[str]:
    """Which batch sizes ran for which engines, and what the sized sweep left out and why."""
    sweep = report.get("sweep")
    if not sweep:
        return []
    if sweep["mode"] == "full":
        head = f"Every batch size asked for ran ({', '.join(map(str, sweep['asked']))}; `--sweep full`)."
    else:
        head = (
            f"Sized to the model (`--sweep sized`): batch sizes up to {MIN_SWEEP} always run; a larger one runs for an engine "
            f"only where its cost at the largest batch it ran, scaled by rows, fits what is left of {sweep['seconds']:.0f} s, "
            f"and where the last batch's memory, scaled, fits {sweep['memory_mb']:.0f} MiB. "
            f"Asked: {', '.join(map(str, sweep['asked']))}; spent {sweep['spent_s']:.0f} s."
        )
    if sweep.get("time_limit_s") is not None:
        head += f" The whole run had a `--time-limit` of {sweep['time_limit_s']:.0f} s: nothing started past it."
    lines = ["## Batch sizes", "", head, ""]
    every = {r["device"]: r["engines"] for r in reversed(sweep["ran"])}  # what the first batch size ran, per device
    for r in sweep["ran"]:
        ran = "every engine" if r["engines"] == every[r["device"]] else ", ".join(r["engines"]) or "no engine"
        lines.append(f"- {r['device']} batch {r['batch']}: {ran}")
    lines += [
        f"- left out: {s['device']} batch {s['batch']}{' for ' + s['engine'] if s['engine'] else ''}: {s['reason']}"
        for s in sweep["skipped"]
    ]
    return [*lines, ""]


def _held_to_parity(report: dict) -> list[str]:
    checks = report.get("held_to_parity") or []
    if not checks:
        return []
    lines = [
        "## Engines held to parity here",
        "",
        "Not part of the parity stage, so each one's answers at each batch size were compared with eager's, under "
        "the model's own tolerance, before its times were counted.",
        "",
        "| engine | device | batch | passed | worst output | max abs | × the bound |",
        "| --- | --- | ---: | --- | --- | ---: | ---: |",
    ]
    for c in checks:
        lines.append(
            f"| {c['engine']} | {c['device']} | {c['batch']} | {'yes' if c['passed'] else '**no**'} | {c['worst_output']} | "
            f"{c['max_abs']:.3g} | {c['tolerance_used']:.3g} |"
        )
    return [*lines, ""]


def _by_device(report: dict) -> list[str]:
    records = report["in_process"]
    return [line for device in dict.fromkeys(r["device"] for r in records) for line in _device(records, device)]


def _device(records: list[dict], device: str) -> list[str]:
    """One device's engines against eager, every engine's latency per call, then the floors on their own."""
    mine = [r for r in records if r["device"] == device]
    batches = list(dict.fromkeys(r["batch"] for r in records))
    engines = [e for e in dict.fromkeys(r["engine"] for r in mine) if not _is_floor(e)]
    floors = [e for e in dict.fromkeys(r["engine"] for r in mine) if _is_floor(e)]
    index = {(r["engine"], r["batch"]): r for r in mine}
    lines = [
        f"## In process, {device.upper()}: each engine's speedup over eager at p50, in words",
        "",
        "| engine | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "| --- |" + " --- |" * len(batches),
        "| eager's time | " + " | ".join(_ms(index.get(("eager", b), {}).get("p50_ms")) for b in batches) + " |",
    ]
    for e in (e for e in engines if e != "eager"):
        lines.append(f"| {e} | " + " | ".join(versus(index.get((e, b), {}).get("speedup_vs_eager_p50"), "eager") for b in batches) + " |")
    lines += [
        "",
        f"## In process, {device.upper()}: latency per call",
        "",
        "| engine | batch | p50 | p90 | p99 | p99.9 | mean | std | samples/s | calls | p50 over its floor's | setup s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in (index[(e, b)] for b in batches for e in engines if (e, b) in index):
        p999 = _ms(r["p999_ms"]) + ("†" if r["iterations"] < 1000 else "")
        lines.append(
            f"| {r['engine']} | {r['batch']} | {_ms(r['p50_ms'])} | {_ms(r['p90_ms'])} | {_ms(r['p99_ms'])} | {p999} | "
            f"{_ms(r['mean_ms'])} | {_ms(r['std_ms'])} | {r['throughput_per_s']:,.0f} | {r['iterations']} | "
            f"{_x(r['ratio_to_floor_p50'])} | {r.get('setup_s', 0):.2f} |"
        )
    return [*lines, "", *_floor_table(index, floors, batches, device)]


def _floor_table(index: dict, floors: list[str], batches: list, device: str) -> list[str]:
    """Each runtime's per-call cost on an identity model: what no engine of that runtime can beat."""
    if not floors:
        return []
    lines = [
        f"## In process, {device.upper()}: floors (an identity model through the same API), p50",
        "",
        "| floor | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "| --- |" + " ---: |" * len(batches),
    ]
    for f in floors:
        lines.append(f"| {f.removeprefix('floor:')} | " + " | ".join(_ms(index.get((f, b), {}).get("p50_ms")) for b in batches) + " |")
    return [*lines, ""]


def _notes(report: dict) -> list[str]:
    """What the tables' marks mean, which providers really ran, and the pairings that cannot exist."""
    providers = sorted({f"{r['engine']} → {r['provider']}" for r in report["in_process"] if not r["engine"].startswith("floor:")})
    lines = [
        "† fewer than 1,000 calls: p99.9 is close to the maximum seen. *setup s*: from binding the inputs to "
        "the end of warm-up (a session per shape, graph capture, compilation), kept out of the timed calls.",
        "",
        f"Providers that really ran: {', '.join(providers)}.",
        "",
    ]
    if report.get("skipped"):
        pairings = "; ".join(f"{s['engine']} on {s['device']} ({s['reason']})" for s in report["skipped"])
        lines += [f"Skipped pairings (they cannot exist, so they are not failures): {pairings}.", ""]
    return lines


def _failures(report: dict) -> list[str]:
    if not report["failures"]:
        return []
    lines = ["## Engines that could not run here", "", "| engine | device | batch | reason |", "| --- | --- | --- | --- |"]
    for f in report["failures"]:
        lines.append(f"| {f['engine']} | {f['device']} | {f['batch'] if f['batch'] is not None else 'all'} | {f['error']} |")
    return [*lines, ""]


def _cold_start(report: dict) -> list[str]:
    if not report["cold_start"]:
        return []
    lines = [
        "## Cold start (fresh process per engine, batch 1)",
        "",
        "| engine | device | import | load / session | first inference | total |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for c in report["cold_start"]:
        if "error" in c:
            lines.append(f"| {c['engine']} | {c['device']} | failed: {c['error']} | | | |")
        elif "left_out" in c:
            lines.append(f"| {c['engine']} | {c['device']} | not run: {c['left_out']} | | | |")
        else:
            lines.append(
                f"| {c['engine']} | {c['device']} | {c['import_s']:.3f} s | {c['load_s']:.3f} s | "
                f"{_ms(c['first_inference_s'] * 1e3)} | {c['total_s']:.3f} s |"
            )
    return [*lines, ""]


def _served(report: dict) -> list[str]:
    served = report.get("served")
    if report.get("served_left_out"):
        return ["## Served", "", f"Not run: {report['served_left_out']}.", ""]
    if not served:
        return []
    lines = _served_header(served)
    for config in served["configs"]:
        lines += _ray_config(config) if config.get("server") == "ray" else _torchserve_config(config)
    if any(c.get("server") == "ray" for c in served["configs"]):
        lines += side_by_side(served["configs"])
    return [*lines, *_profile_markdown(served), *_inputs_markdown(served), *_comparisons(served)]


def _engines(report: dict) -> list[str]:
    return ["## Engines", "", *(f"- **{k}**: {v}" for k, v in report["engines"].items()), ""]


# The report's sections, in order: each renders its part of the JSON report, or nothing.
SECTIONS = (
    _header,
    _variants,
    _winners,
    _sweep,
    _held_to_parity,
    _by_device,
    _notes,
    _failures,
    _cold_start,
    _served,
    _engines,
)


def markdown(report: dict) -> str:
    return "\n".join(line for section in SECTIONS for line in section(report))


def _served_header(served: dict) -> list[str]:
    generators = sorted({r.get("generator", "locust") for c in served["configs"] for r in c["runs"]})
    return [
        f"## Served (real servers on 127.0.0.1; load from {' and '.join(generators)}, closed-loop clients on the same machine)",
        "",
        *verdicts(served["configs"]),
        "",
        f"{_sent(served)}. Latency is what the client saw; the floor is `/ping` on the "
        "same server at the same concurrency; queue and frontend time come from TorchServe's own per-request "
        "metrics, the handler time per batch from the worker.",
        "",
    ]


def _ray_config(config: dict) -> list[str]:
    sc = config["server_config"]
    lines = [
        f"### {config['name']}: Ray Serve, {sc['replicas']} replica(s), serve.batch up to {sc.get('batchSize')} "
        f"within {sc.get('maxBatchDelay')} ms (the archive's model config); a local Ray cluster on 127.0.0.1",
        "",
        _ray_route(sc),
        "",
        "| clients | req/s | p50 | p90 | p99 | errors | floor p50 | × floor | load CPU |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r, p in zip(config["runs"], config["ping"]):
        lines.append(
            f"| {r['concurrency']} | {r['requests_per_s']:,.0f} | {_ms(r['p50_ms'])} | {_ms(r['p90_ms'])} | "
            f"{_ms(r['p99_ms'])} | {r['errors']} | {_ms(p['p50_ms'])} | {_x(r['ratio_to_ping_p50'])} | {_share(r)} |"
        )
    return [*lines, ""]


def _ray_route(sc: dict) -> str:
    if sc.get("route") == "direct ingress":
        spread = f", the clients spread over the {sc['addresses']} replicas' addresses" if sc.get("addresses", 1) > 1 else ""
        return f"Sent to the replica's own HTTP server (direct ingress){spread}; the floor is `/v2/health/live` there too."
    return "Sent through Serve's HTTP proxy; the floor is `/v2/health/live` through the same proxy."


def _torchserve_config(config: dict) -> list[str]:
    sc = config["server_config"]
    server = ", ".join(f"{k}={v}" for k, v in config.get("changes", {}).get("server", {}).items())
    lines = [
        f"### {config['name']}: batchSize {sc.get('batchSize')}, maxBatchDelay {sc.get('maxBatchDelay')} ms, "
        f"workers {sc.get('minWorkers')}" + (f"; server: {server}" if server else ""),
        "",
        f"TorchServe's metrics from its {config['runs'][0]['torchserve_metrics']['source'] if config['runs'] else '—'}.",
        "",
        "| clients | req/s | p50 | p90 | p99 | errors | /ping p50 | × ping | TS queue mean | TS total mean | handler/batch | queue share | load CPU |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r, p in zip(config["runs"], config["ping"]):
        m = r["torchserve_metrics"]
        share = m.get("queue_share_of_total")
        lines.append(
            f"| {r['concurrency']} | {r['requests_per_s']:,.0f} | {_ms(r['p50_ms'])} | {_ms(r['p90_ms'])} | "
            f"{_ms(r['p99_ms'])} | {r['errors']} | {_ms(p['p50_ms'])} | {_x(r['ratio_to_ping_p50'])} | "
            f"{_ms(m['queue'].get('mean_ms'))} | {_ms(m['frontend_total'].get('mean_ms'))} | "
            f"{_ms(m['handler_per_batch'].get('mean_ms', m['handler_per_batch'].get('last_ms')))} | "
            f"{'—' if share is None else f'{share:.0%}'} | {_share(r)} |"
        )
    return [*lines, ""]


def _comparisons(served: dict) -> list[str]:
    lines: list[str] = []
    for c in served.get("comparisons", []):
        lines += [
            f"### {c['other']} vs {c['base']}",
            "",
            f"At {c['concurrency']} clients: {_x(c['rps_ratio'])} the requests/s; p99 {_ms(c['p99_other_ms'])} vs "
            f"{_ms(c['p99_base_ms'])}; errors {c['errors']}.",
            "",
            "| clients | more req/s | req/s ratio | p99 ratio |",
            "| ---: | --- | ---: | ---: |",
        ]
        for conc, w in c["per_concurrency"].items():
            lines.append(f"| {conc} | {w['winner_rps']} | {_x(w['rps_ratio'])} | {_x(w['p99_ratio'])} |")
        lines.append("")
    return lines


PROFILE_PARTS = (
    ("client_to_frontend_and_back_ms", "client ↔ frontend (HTTP; client mean − TorchServe's total)"),
    ("queue_ms", "queue (TorchServe's ts_queue_latency)"),
    ("rest_ms", "batch assembly, frontend ↔ worker, worker protocol, metrics and logs"),
    ("handler_ms", "handler: parse, validate, run, encode (timed in process)"),
)


def _sent(served: dict) -> str:
    request = served.get("request", {})
    if "request_body" in served:
        return f"Request body: `{served['request_body']}`"
    return f"Request: {request.get('kind')}, {request.get('bytes', 0):,} bytes, Content-Type {request.get('content_type')}"


READING = {"jpeg": "decoding, resizing and normalising the image", "text": "tokenizing the text"}


def _inputs_markdown(served: dict) -> list[str]:
    """The real input against the same tensors in binary, and its preprocessing timed alone."""
    inputs, handler = served.get("inputs"), served.get("handler") or {}
    if not inputs:
        return []
    request, binary = inputs["request"], inputs["binary"]
    lines = [
        f"### {request['kind']} against the same tensors in binary (tuned)",
        "",
        f"The request ({request['bytes']:,} bytes, {request['content_type']}) and the tensors the archive's reader makes "
        f"from it, sent as an Open Inference Protocol binary request ({binary['bytes']:,} bytes to "
        "`/v2/models/<model>/infer`), to the same server in the same run.",
    ]
    pre, per = handler.get("preprocess_us_per_request"), handler.get("us_per_request", {})
    if pre is not None and "1" in per:
        lines.append(
            f"In process, the archive's handler takes {_ms(per['1'] / 1e3)} per request at batch 1, of which "
            f"{_ms(pre / 1e3)} ({pre / per['1']:.0%}) is reading the request ({READING.get(request['kind'].split()[0], 'preprocessing')}) "
            "and the rest the model and the answer."
        )
    lines += [
        "",
        f"| clients | {request['kind']} p50 | binary p50 | p50 ratio | {request['kind']} req/s | binary req/s | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in inputs["per_concurrency"]:
        lines.append(
            f"| {r['concurrency']} | {_ms(r['p50_ms'])} | {_ms(r['binary_p50_ms'])} | {_x(r['p50_ratio'])} | "
            f"{r['requests_per_s']:,.1f} | {r['binary_requests_per_s']:,.1f} | {r['errors']} |"
        )
    return [*lines, ""]


def _profile_markdown(served: dict) -> list[str]:
    rows, handler = served.get("profile"), served.get("handler")
    if not rows or not handler:
        return []
    us = handler["us_per_request"]
    lines = [
        "### Where a request's time goes (tuned)",
        "",
        "Means per request: the client's mean latency split with TorchServe's own counters (total and queue "
        "time in the frontend) and the handler timed in this process on the same archive "
        f"({', '.join(f'batch {b}: {v:.1f} µs per request' for b, v in us.items())}). The handler's share uses batch 1 "
        "for one client and the largest batch for more, where batches fill. The stacked bar is in latency.png.",
        "",
        "| clients | client mean | " + " | ".join(label for _, label in PROFILE_PARTS) + " |",
        "| ---: | ---: | " + " | ".join("---:" for _ in PROFILE_PARTS) + " |",
    ]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {_ms(r['client_mean_ms'])} | " + " | ".join(_ms(r[key]) for key, _ in PROFILE_PARTS) + " |")
    return [*lines, ""]


def _share(run: dict) -> str:
    share = run.get("generator_cpu_share")
    return "—" if share is None else f"{run.get('generator', '?')} {share:.0%}"


def verdicts(configs: list[dict]) -> list[str]:
    """One line per concurrency: who served most, by how much over the first config, and what the load generator cost."""
    base = configs[0]["name"]
    by = {c["name"]: {r["concurrency"]: r for r in c["runs"]} for c in configs}
    lines = ["Verdict per concurrency:", ""]
    for conc in sorted({c for runs in by.values() for c in runs}):
        rows = {name: runs[conc] for name, runs in by.items() if conc in runs}
        best = max(rows, key=lambda name: rows[name]["requests_per_s"])
        r, b = rows[best], rows.get(base)
        than = f"; {_x(r['requests_per_s'] / b['requests_per_s'])} {base}'s" if b and best != base and b["requests_per_s"] else ""
        errors = sum(x["errors"] for x in rows.values())
        shares = [x["generator_cpu_share"] for x in rows.values() if x.get("generator_cpu_share") is not None]
        load = ""
        if shares:
            low, high = f"{min(shares):.0%}", f"{max(shares):.0%}"
            load = f"; the load generator used {low if low == high else f'{low}-{high}'} of the machine's CPU"
        lines.append(
            f"- **{conc} client{'s' if conc > 1 else ''}**: {best} serves most, {r['requests_per_s']:,.0f} req/s at p50 {_ms(r['p50_ms'])} / "
            f"p99 {_ms(r['p99_ms'])}{than}; {errors} error(s) across configs{load}."
        )
    return lines


def side_by_side(configs: list[dict]) -> list[str]:
    """TorchServe and Ray Serve at each concurrency: req/s, p50, p99, errors, one row per concurrency."""
    names = [c["name"] for c in configs]
    by = {c["name"]: {r["concurrency"]: r for r in c["runs"]} for c in configs}
    lines = [
        "### TorchServe and Ray Serve side by side",
        "",
        "Each cell: req/s · p50 · p99 · errors.",
        "",
        "| clients | " + " | ".join(names) + " |",
        "| ---: | " + " | ".join("---" for _ in names) + " |",
    ]
    for conc in sorted({c for runs in by.values() for c in runs}):
        cells = []
        for name in names:
            r = by[name].get(conc)
            cells.append("—" if r is None else f"{r['requests_per_s']:,.0f} · {_ms(r['p50_ms'])} · {_ms(r['p99_ms'])} · {r['errors']}")
        lines.append(f"| {conc} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot(report: dict, path: Path) -> None:
    """One panel per question, stacked: which engine is fastest per batch size; how each compares with eager; served
    latency and throughput against clients; where a served request's time goes. Legends sit right of the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = report.get("served")
    profile_rows = (served or {}).get("profile") or []
    panels = 2 + (2 if served else 0) + (1 if profile_rows else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.6 * panels), squeeze=False)
    column = [row[0] for row in axes]
    colours = engine_colours(report["in_process"])
    _latency_panel(column[0], report, colours)
    _speedup_panel(column[1], report, colours)
    if served:
        _served_panels(column[2], column[3], served)
    if profile_rows:
        _profile_panel(column[-1], profile_rows)
    for ax in column:
        _linear_without_data(ax)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    files.write_bytes(path, buf.getvalue())


# Eager is black, the floors grey and dashed; every other engine takes a colour of its own: tab10's first, then
# tab20's paler halves, greys skipped either way.
EAGER_COLOUR = "black"
FLOOR_STYLES = (("0.35", "--"), ("0.55", "-."), ("0.7", ":"), ("0.45", (0, (5, 1))), ("0.8", (0, (3, 1, 1, 1, 1, 1))))


def _floor_dash(engine: str, records: list[dict]):
    floors = [e for e in dict.fromkeys(r["engine"] for r in records) if _is_floor(e)]
    return FLOOR_STYLES[floors.index(engine) % len(FLOOR_STYLES)][1]


def engine_colours(records: list[dict]) -> dict[str, object]:
    """A colour per engine that ran: eager black, floors grey, no two engines alike."""
    import matplotlib

    tab10, tab20 = matplotlib.colormaps["tab10"], matplotlib.colormaps["tab20"]
    palette = [tab10(i) for i in range(10) if i != 7] + [tab20(i) for i in range(1, 20, 2) if i != 15]  # 7, 15: greys
    engines = [e for e in dict.fromkeys(r["engine"] for r in records) if e != "eager" and not _is_floor(e)]
    floors = [e for e in dict.fromkeys(r["engine"] for r in records) if _is_floor(e)]
    return {
        "eager": EAGER_COLOUR,
        **{e: palette[i % len(palette)] for i, e in enumerate(engines)},
        **{f: FLOOR_STYLES[i % len(FLOOR_STYLES)][0] for i, f in enumerate(floors)},
    }


def _series(records: list[dict]):
    """(device, engine, its records by batch) for each engine that ran, devices apart."""
    for device in dict.fromkeys(r["device"] for r in records):
        for engine in dict.fromkeys(r["engine"] for r in records if r["device"] == device):
            yield device, engine, sorted((r for r in records if r["device"] == device and r["engine"] == engine), key=lambda r: r["batch"])


def _label(engine: str, device: str, devices: int) -> str:
    return engine if devices == 1 else f"{engine} ({device})"


def _linear_without_data(ax) -> None:
    """A log axis with no positive data to place (a panel whose only line is eager's 1× rule, a run whose
    figures are all 0) cannot draw its ticks: matplotlib raises. That axis goes linear instead."""
    limits = ax.dataLim
    for axis, low, high in (("x", limits.x0, limits.x1), ("y", limits.y0, limits.y1)):
        scale = ax.get_xscale() if axis == "x" else ax.get_yscale()
        if scale == "log" and not (np.isfinite(low) and np.isfinite(high) and high > 0):
            (ax.set_xscale if axis == "x" else ax.set_yscale)("linear")


def _latency_panel(ax, report: dict, colours: dict) -> None:
    records = report["in_process"]
    devices = len({r["device"] for r in records})
    for device, engine, rows in _series(records):
        floor = _is_floor(engine)
        ax.plot(
            [r["batch"] for r in rows],
            [r["p50_ms"] for r in rows],
            ls=_floor_dash(engine, records) if floor else "-",
            marker="" if floor else ("o" if device == "cpu" else "s"),
            ms=4,
            lw=2.2 if engine == "eager" else 1.3,
            color=colours[engine],
            label=_label(engine, device, devices),
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="ms per call, p50 (lower is faster)",
        title=f"{report['model']}, in process: the fastest engine per batch size",
    )


def _speedup_panel(ax, report: dict, colours: dict) -> None:
    records = report["in_process"]
    devices = len({r["device"] for r in records})
    for device, engine, rows in _series(records):
        if _is_floor(engine) or engine == "eager":
            continue
        ax.plot(
            [r["batch"] for r in rows],
            [r["speedup_vs_eager_p50"] for r in rows],
            marker="o" if device == "cpu" else "s",
            ms=4,
            color=colours[engine],
            label=_label(engine, device, devices),
        )
    ax.axhline(1.0, color=EAGER_COLOUR, lw=2.2, label="eager (1×)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="× eager's speed (higher is faster)",
        title="in process: faster (above 1×) or slower (below) than eager",
    )


def _served_panels(lat, thr, served: dict) -> None:
    for config in served["configs"]:
        c = [r["concurrency"] for r in config["runs"]]
        (line,) = lat.plot(c, [r["p50_ms"] for r in config["runs"]], marker="o", label=f"{config['name']} p50")
        lat.plot(c, [r["p99_ms"] for r in config["runs"]], ":", marker="^", color=line.get_color(), label=f"{config['name']} p99")
        thr.plot(c, [r["requests_per_s"] for r in config["runs"]], marker="o", color=line.get_color(), label=config["name"])
    ping = served["configs"][0]["ping"]
    lat.plot([p["concurrency"] for p in ping], [p["p50_ms"] for p in ping], "--", color="grey", label="TorchServe /ping p50 (floor)")
    lat.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent clients",
        ylabel="ms per request (lower is faster)",
        title="served: latency as clients grow",
    )
    thr.set(
        xscale="log",
        xlabel="concurrent clients",
        ylabel="requests/s (higher is better)",
        title="served: throughput as clients grow",
    )
    for a in (lat, thr):
        a.set_xticks(sorted({r["concurrency"] for config in served["configs"] for r in config["runs"]}))
        a.xaxis.set_major_formatter("{x:g}")
        a.xaxis.set_minor_formatter("")


def _profile_panel(bars, profile_rows: list[dict]) -> None:
    labels = [str(r["concurrency"]) for r in profile_rows]
    bottom = np.zeros(len(profile_rows))
    for key, label in PROFILE_PARTS:
        values = np.array([r[key] for r in profile_rows])
        bars.bar(labels, values, bottom=bottom, label=label.split(" (")[0])
        bottom += values
    bars.set(
        xlabel="concurrent clients", ylabel="ms per request, mean (lower is faster)", title="served, tuned: where a request's time goes"
    )


def console_summary(report: dict, settings) -> str:
    """A few lines for the terminal: eager's time and every engine against it at the smallest batch, the fastest engine
    at each batch, what could not run, where the reports are."""
    out = [f"\n{report['model']}: benchmark done in {report['seconds']:.0f}s"]
    smallest = min(settings.batch_sizes)
    for r in report["in_process"]:
        if r["batch"] != smallest or _is_floor(r["engine"]):
            continue
        if r["engine"] == "eager":
            out.append(f"  {r['device']} batch {smallest}: {'eager':<22} p50 {_ms(r['p50_ms'])} (the baseline)")
        elif r["speedup_vs_eager_p50"] is not None:
            floor = f", {_x(r['ratio_to_floor_p50'])} its floor's time" if r["ratio_to_floor_p50"] is not None else ""
            out.append(
                f"  {r['device']} batch {smallest}: {r['engine']:<22} p50 {_ms(r['p50_ms'])}, "
                f"{versus(r['speedup_vs_eager_p50'], 'eager')}{floor}"
            )
    for w in winners(report["in_process"]):
        best, eager = w["best"], w["eager"]
        than = f", {versus(eager['p50_ms'] / best['p50_ms'], 'eager')} ({_ms(eager['p50_ms'])})" if eager else ""
        out.append(f"  fastest, {w['device']} batch {w['batch']}: {best['engine']} {_ms(best['p50_ms'])}{than}")
    for f in report["failures"]:
        out.append(f"  could not run {f['engine']} ({f['device']}): {f['error'][:120]}")
    folder = Path(settings.root) / "reports" / report["model"]
    stem = settings.report_stem()
    out.append(f"  reports  {folder}/{stem}.md, {stem}.json, {stem}.png")
    return "\n".join(out)
