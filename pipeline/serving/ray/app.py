"""The Ray Serve application: the same verified `.mar` that TorchServe serves, on a Ray cluster.

Each replica fetches the archive (a path, or a file:// / http(s):// URL), checks its
SHA-256 against the one the manifest recorded, checks its members like every server
(`inspect_archive`), and serves its `model.onnx` through `pipeline.serving.common.predictor`,
the code path the TorchServe handler uses. Requests are batched with `@serve.batch`,
sized from the archive's own model-config.yaml.

Routes (all under the model's name, beside each other):
    POST /predictions/<model>          the project's JSON format, as on TorchServe (and texts or
                                       images, see pipeline.serving.common.preprocess; PUT too, for curl -T)
    GET  /v2/health/live, /v2/health/ready
    GET  /v2, /v2/models/<model>, /v2/models/<model>/ready
    POST /v2/models/<model>/infer      Open Inference Protocol v2 (JSON and binary tensors)
Ray Serve has no data-plane authentication, so the application checks a bearer token
(read from a key file) first, on every path but the two health routes: without it, an
unknown path is a 401 like any other, and only a caller with the token is told the routes.
Bodies over the cap (the archive's max_request_bytes, as on TorchServe) get 413 with JSON;
a body that has not arrived within body_timeout_s, or that stops for body_idle_s, gets 408 and
frees its replica slot.
Decoding (an OIP request, a multipart form, a batch's images and texts) and inference run in
a thread, never on the replica's event loop, which keeps reading bodies and answering health checks.
Serve's proxy answers 408 to a request not answered within HTTP_LIMITS' request_timeout_s,
and 503 at once to one past max_queued_requests (while every replica slot is taken).

What Ray does not let the application guard (Ray 2.60): its proxy answers /-/routes and
/-/healthz itself, and reads each request's whole body into memory while the request waits
for a replica, before the application sees its token or its length (see `_body`).

Entry point for `serve run`, a Serve config file and KubeRay: `pipeline.serving.ray.app:build`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import shutil
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pipeline.artifacts.archive import MAX_TOTAL_BYTES, extract_model, inspect_archive, read_contract
from pipeline.errors import IntegrityError, PipelineError
from pipeline.serving.common import RETRY_AFTER_S, STAGE, VERSION_HEADER, metrics, oip, openai, preprocess
from pipeline.serving.common.contract import Contract, RequestError
from pipeline.serving.common.generation import NATIVE, GenerationPredictor
from pipeline.serving.common.metrics import Recorder
from pipeline.serving.common.predictor import Answer, open_model

if TYPE_CHECKING:
    from pipeline.serving.common.predictor import Served

log = logging.getLogger(__name__)
ENTRY_POINT = "pipeline.serving.ray.app:build"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Serve's logging for the proxy and the replicas: no access-log line per request (each one
# flushed on its own); warnings and errors still reach Ray's logs.
QUIET = {"enable_access_log": False, "log_level": "WARNING"}
# Serve's http_options beside host and port: the proxy answers 408 to a request not answered
# within this (queueing, body and inference together), and drops what it held of it.
# TorchServe's default_response_timeout is the same 30 s.
HTTP_LIMITS = {"request_timeout_s": 30.0}


def http_limits(archive: str) -> dict[str, float]:
    """HTTP_LIMITS for an archive: a generation model's requests may run their request_timeout_s, and a margin,
    before Serve cuts them (its own limit ends them first, with an error a client can read)."""
    path = Path(urlsplit(archive).path if archive.startswith("file://") else archive)
    if not path.is_file():  # an http(s):// archive: the replica reads its limits; Serve keeps the default
        return dict(HTTP_LIMITS)
    generation = read_contract(path).get("generation") or {}
    return {"request_timeout_s": max(HTTP_LIMITS["request_timeout_s"], float(generation.get("request_timeout_s", 0)) + 10)}


@dataclass(frozen=True)
class RayAppOptions:
    """The application's arguments (`serve run ... key=value`, a config file's `args`)."""

    archive: str  # path or file:// / http(s):// URL of the .mar
    sha256: str  # the archive's hash, from the manifest's "mar" record
    token_file: str  # JSON key file {"inference": {"key": ...}}, mode 0600
    replicas: int | str = 1  # a count, or "auto" for autoscaling between the two below
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: int = 8  # autoscaling's per-replica target
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0  # per replica; 1 serves on the GPU Ray assigns (as the handler does)
    max_request_bytes: int | None = None  # default: the archive's max_request_bytes, the cap TorchServe gets
    batch_size: int | None = None  # default: the archive's batchSize
    batch_wait_ms: float | None = None  # default: the archive's maxBatchDelay
    body_timeout_s: float = 10.0  # a request body must arrive within this, or 408 (its replica slot is freed)
    body_idle_s: float = 2.0  # and no gap between its chunks may be longer: a body declared and not sent is a 408 after this
    max_queued_requests: int = 64  # requests the proxy holds while every replica slot is taken; past it, 503 at once
    # A folder every replica can write (the local cluster's): their metrics are gathered there, and /metrics shows them all.
    # None: each replica's /metrics shows its own.
    metrics_dir: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> RayAppOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise PipelineError(STAGE, f"unknown Ray application option(s) {unknown}", f"the options are {sorted(known)}")
        missing = [n for n in ("archive", "sha256", "token_file") if not args.get(n)]
        if missing:
            raise PipelineError(STAGE, f"the Ray application needs {missing}", "pass archive=<path or URL> sha256=<hash> token_file=<path>")
        options = cls(**args)
        if options.replicas != "auto" and not (isinstance(options.replicas, int) and options.replicas >= 1):
            try:
                options = cls(**{**args, "replicas": int(options.replicas)})
            except ValueError:
                raise PipelineError(
                    STAGE, f"replicas must be a positive integer or 'auto', got {options.replicas!r}", "e.g. replicas=2"
                ) from None
            if int(options.replicas) < 1:
                raise PipelineError(STAGE, f"replicas must be at least 1, got {options.replicas}", "e.g. replicas=2")
        if not 1 <= options.min_replicas <= options.max_replicas:
            raise PipelineError(
                STAGE, f"need 1 <= min_replicas <= max_replicas, got {options.min_replicas} and {options.max_replicas}", "e.g. min 1, max 4"
            )
        if not options.body_timeout_s > 0:
            raise PipelineError(STAGE, f"body_timeout_s must be over 0, got {options.body_timeout_s}", "e.g. body_timeout_s=10")
        if not 0 < options.body_idle_s <= options.body_timeout_s:
            raise PipelineError(
                STAGE, f"body_idle_s must be over 0 and at most body_timeout_s, got {options.body_idle_s}", "e.g. body_idle_s=2"
            )
        if options.max_queued_requests < 1:
            raise PipelineError(STAGE, f"max_queued_requests must be at least 1, got {options.max_queued_requests}", "e.g. 64")
        return options

    def to_args(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def fetch_archive(source: str, sha256: str, folder: Path) -> Path:
    """The archive copied into `folder`, refused unless its SHA-256 is the one given."""
    parts = urlsplit(source)
    dest = folder / "model.mar"
    digest = hashlib.sha256()
    fix = "point archive= at the .mar that make export built, with sha256= from its manifest (artifacts/<model>/manifest.json, 'mar')"
    try:
        if parts.scheme in ("http", "https"):
            reader = urllib.request.urlopen(source, timeout=60)
        elif parts.scheme in ("", "file"):
            reader = open(parts.path if parts.scheme else source, "rb")  # noqa: SIM115 (closed by the with below)
        else:
            raise PipelineError(STAGE, f"cannot fetch an archive from a {parts.scheme}:// URL", "use a path, file:// or http(s)://")
        with reader, open(dest, "wb") as out:
            total = 0
            while chunk := reader.read(1 << 20):
                total += len(chunk)
                if total > MAX_TOTAL_BYTES:
                    raise IntegrityError(STAGE, f"{source} is over {MAX_TOTAL_BYTES} bytes; refusing it", fix)
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise PipelineError(STAGE, f"cannot read the archive {source}: {exc}", fix) from None
    if not hmac.compare_digest(digest.hexdigest(), sha256.lower()):
        raise IntegrityError(STAGE, f"{source} has SHA-256 {digest.hexdigest()}, not the verified archive's {sha256}", fix)
    return dest


def read_token(path: str) -> str:
    """The inference key from a key file; refused if any other user can read it or its group can write it.

    (A Kubernetes Secret mounted for a non-root user is group-readable by that user's group.)
    """
    file = Path(path)
    try:
        mode = file.stat().st_mode & 0o777
        key = json.loads(file.read_text())["inference"]["key"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(
            STAGE, f"cannot read the token from {path}: {exc}", 'write {"inference": {"key": "<token>"}} there, mode 0600'
        ) from None
    if mode & 0o027:
        raise PipelineError(STAGE, f"{path} is open to other users (mode {mode:o})", f"chmod 600 {path}")
    if not isinstance(key, str) or len(key) < 16:
        raise PipelineError(STAGE, f"the token in {path} is too short", "use at least 16 random characters")
    return key


def load(options: RayAppOptions, folder: Path, gpu_id: int | None = None) -> tuple[Served, dict, str]:
    """The predictor, the archive's model config and its version, from a verified archive."""
    mar = fetch_archive(options.archive, options.sha256, folder)
    info = inspect_archive(mar)
    model = extract_model(mar, folder)  # with its model.onnx.data beside it, where it has one
    contract = Contract(info["contract"])
    # The archive's threads where it was packaged with some, else one per CPU the replica reserves.
    # (Not OMP_NUM_THREADS: Ray sets that in its workers itself, from their CPUs.)
    predictor = open_model(model, contract, gpu_id, default_threads=max(1, int(options.num_cpus)))
    return predictor, info["model_config"] or {}, info["version"]


def batch_settings(options: RayAppOptions, model_config: dict) -> tuple[int, float]:
    size = options.batch_size or int(model_config.get("batchSize", 1))
    wait_ms = options.batch_wait_ms if options.batch_wait_ms is not None else float(model_config.get("maxBatchDelay", 1))
    return max(1, size), max(0.0, wait_ms) / 1000.0


def _json(status: int, payload: dict | bytes, headers: dict[str, str] | None = None):
    from starlette.responses import Response

    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(code: int, message: str):
    return _json(code, Answer.error(code, message).body)


class ModelServer:
    """One replica: a verified model, a token, and routes. Wrapped by `serve.deployment` in `build`."""

    def __init__(self, args: dict[str, Any]):
        import ray
        from ray import serve

        self.options = RayAppOptions.from_args(args)
        # The pipeline's warnings (a generation stopped early, or failed) go where the replica's own do:
        # Serve's log file for it, logs/serve/replica_*.log (its stderr is logged below the level kept).
        ours = logging.getLogger("pipeline")
        for handler in logging.getLogger("ray.serve").handlers:
            if handler not in ours.handlers:
                ours.addHandler(handler)
        self.folder = Path(tempfile.mkdtemp(prefix="pipeline-ray-"))
        gpus = ray.get_gpu_ids() if self.options.num_gpus > 0 else []
        # Ray sets CUDA_VISIBLE_DEVICES to the replica's GPU, which is device 0 inside it.
        self.predictor, model_config, self.version = load(self.options, self.folder, 0 if gpus else None)
        self.contract = self.predictor.contract
        self.recorder = Recorder(self.contract.model, self.version)
        if isinstance(self.predictor, GenerationPredictor):
            self.predictor.recorder = self.recorder  # generation requests are counted where they end
        self.max_request_bytes = self.options.max_request_bytes or self.contract.max_request_bytes
        self.token = read_token(self.options.token_file).encode("utf-8")
        # A multipart body's parts: one file per image, and no more images than rows.
        self.max_parts = min(preprocess.MAX_FORM_PARTS, self.contract.max_rows)
        size, wait_s = batch_settings(self.options, model_config)
        if size > max_ongoing(self.options):
            log.warning("batch size %d is over max_ongoing_requests %d: batches are capped there", size, max_ongoing(self.options))
            size = max_ongoing(self.options)
        # One batcher per replica, sized from the archive this replica verified.
        self.predict: Callable[[tuple[dict, str | None]], Awaitable[Answer]] = serve.batch(
            max_batch_size=size, batch_wait_timeout_s=wait_s
        )(self.answer)
        model = self.contract.model
        self.routes = {
            ("POST", f"/predictions/{model}"): self.native,
            ("PUT", f"/predictions/{model}"): self.native,  # `curl -T cat.jpg`, which TorchServe takes too
            ("POST", f"/v2/models/{model}/infer"): self.infer,
            ("GET", f"/v2/models/{model}"): self.model_metadata,
            ("GET", f"/v2/models/{model}/ready"): self.ready,
            ("GET", "/v2"): self.server_metadata,
            ("GET", "/v2/health/live"): self.ready,
            ("GET", "/v2/health/ready"): self.ready,
            ("GET", "/metrics"): self.metrics,
        }
        # The routes whose requests the metrics count here (a generation's are counted by its predictor).
        self.counted = {(method, path) for method, path in self.routes if path.startswith("/predictions/") or path.endswith("/infer")}
        self.open_paths = {"/v2/health/live", "/v2/health/ready"}
        self.generation: Streams | None = None
        if isinstance(self.predictor, GenerationPredictor):
            self.generation = Streams(
                self.predictor, min(self.predictor.gen.max_streams + self.predictor.gen.max_queued, max_ongoing(self.options))
            )
            self.routes |= {
                ("POST", f"/predictions/{model}"): partial(self.generate, protocol=NATIVE),
                ("POST", "/v1/completions"): partial(self.generate, protocol=openai.COMPLETIONS),
                ("POST", "/v1/chat/completions"): partial(self.generate, protocol=openai.CHAT),
                ("GET", "/v1/models"): self.models,
                ("POST", f"/v2/models/{model}/infer"): partial(self.generate, protocol="oip"),  # refused, as on TorchServe
            }
            del self.routes[("PUT", f"/predictions/{model}")]
            self.counted.clear()
        log.info("replica serving %s on %s, batches of up to %d within %.1f ms", model, self.predictor.provider, size, wait_s * 1e3)

    def __del__(self):
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)

    def check_health(self) -> None:
        """Ray Serve's health check: the session still answers."""
        self.predictor.session.get_inputs()

    async def answer(self, requests: list[tuple[dict, str | None]]) -> list[Answer]:
        """One batch of (item, Content-Type) through the shared predictor; `self.predict` is this behind `serve.batch`."""
        # In a thread: decoding images, tokenizing and the session's run would otherwise hold the
        # replica's event loop, and with it every other request's body, health checks and batching.
        self.recorder.batch.observe(len(requests))
        return await asyncio.to_thread(self.predictor.answer, [item for item, _ in requests], [kind for _, kind in requests])

    async def __call__(self, request):
        path = request.url.path.rstrip("/") or "/"
        # The token first: without it, an unknown path is no different from a known one.
        if path not in self.open_paths and not self._authorized(request):
            return _error(
                401, "missing or wrong bearer token: send the header Authorization: Bearer <token> (python -m pipeline token --on ray)"
            )
        route = self.routes.get((request.method, path))
        if route is None:
            if any(p == path for _, p in self.routes):
                return _error(405, f"{request.method} is not allowed on {path}")
            return _error(404, f"no route {path}; this server has {sorted({p for _, p in self.routes})}")
        if (request.method, path) not in self.counted:
            response = await route(request)
        else:
            started = time.perf_counter()
            with self.recorder.working(1):
                response = await route(request)
            self.recorder.answered(response.status_code, time.perf_counter() - started)
        response.headers[VERSION_HEADER] = self.version
        return response

    def _authorized(self, request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), self.token)

    async def _body(self, request) -> bytes:
        """The body, read within body_timeout_s and no further than the cap; else a RequestError (408, 413).

        By the time this runs, Ray's proxy may hold the whole body already: its
        `proxy_asgi_receive` task (ray/serve/_private/proxy.py, HTTPProxy.send_request_to_replica)
        reads every chunk into an unbounded queue from the moment a request is routed, while
        it waits for a replica, and no Ray setting bounds it. What bounds it is time:
        request_timeout_s (HTTP_LIMITS), and max_queued_requests for how many may wait.
        """
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise self._too_large()
        try:
            return await asyncio.wait_for(self._read(request), self.options.body_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(
                f"the request body did not arrive within {self.options.body_timeout_s:g} s; send it whole, at once", code=408
            ) from None

    async def _read(self, request) -> bytes:
        chunks, total = [], 0
        stream = request.stream().__aiter__()
        while True:
            # Each chunk within body_idle_s: a client that declares a body and sends none (or stops)
            # holds its replica slot that long, not the whole body_timeout_s.
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), self.options.body_idle_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise RequestError(
                    f"no part of the request body arrived for {self.options.body_idle_s:g} s; send it whole, at once", code=408
                ) from None
            total += len(chunk)
            if total > self.max_request_bytes:
                raise self._too_large()  # read no further
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> RequestError:
        source = (
            "the application's max_request_bytes option"
            if self.options.max_request_bytes
            else "max_request_bytes in the model's io_contract.json"
        )
        return RequestError(f"request body over {self.max_request_bytes} bytes ({source}); send fewer rows per request", code=413)

    async def native(self, request):
        try:
            raw = await self._body(request)
        except RequestError as exc:
            return _error(exc.code, str(exc))
        content_type = request.headers.get("content-type")
        kind = preprocess.media_type(content_type)
        # TorchServe turns a form body into fields: the files of a multipart body are images for
        # a model that takes them; any other form gets the contract's hint, the same here.
        item: dict = {"body": raw}
        if kind == "multipart/form-data" and self.contract.image_input:
            try:
                item = dict(await asyncio.to_thread(preprocess.multipart_files, raw, content_type or "", self.max_parts))
            except RequestError as exc:
                return _error(exc.code, str(exc))
        elif kind in FORM_TYPES:
            item = {}
        answer = await self.predict((item, content_type))
        return _json(answer.status, answer.body)

    async def infer(self, request):
        try:
            raw = await self._body(request)
            body, plan = await asyncio.to_thread(oip.decode_infer, raw, request.headers.get(oip.HEADER_LENGTH), self.contract)
        except RequestError as exc:
            return _error(exc.code, str(exc))
        answer = await self.predict(({"body": body}, None))
        if answer.status != 200:
            return _json(answer.status, answer.body)
        payload, header_length = oip.encode_infer(json.loads(answer.body), plan, self.contract, self.version)
        if header_length is None:
            return _json(200, payload)
        from starlette.responses import Response

        return Response(payload, media_type="application/octet-stream", headers={oip.HEADER_LENGTH: str(header_length)})

    async def generate(self, request, protocol: str):
        """A generation request, streamed or whole, in its protocol (`Streams`)."""
        assert self.generation is not None  # the route exists only for a generation model
        try:
            raw = await self._body(request)
        except RequestError as exc:
            return _json(exc.code, self.generation.predictor.error(protocol, exc.code, str(exc)))
        return await self.generation.answer(raw, protocol)

    async def models(self, request):
        assert self.generation is not None
        return _json(200, self.generation.predictor.models())

    async def model_metadata(self, request):
        return _json(200, oip.metadata(self.contract, self.version))

    async def server_metadata(self, request):
        import ray

        return _json(200, {"name": "pipeline-ray-serve", "version": ray.__version__, "extensions": ["binary_tensor_data"]})

    async def ready(self, request):
        return _json(200, {"ready": True})

    async def metrics(self, request):
        """Prometheus text: every replica's on the local cluster (their metrics folder), else this replica's own."""
        from starlette.responses import Response

        return Response(await asyncio.to_thread(metrics.exposition, metrics.folder_from_env()), media_type=metrics.CONTENT_TYPE)


class Streams:
    """A replica's generation: one thread steps the batch, each request reads its bytes from a queue of its own.

    A request is checked and queued on the event loop (a bad one is answered at once), and
    refused with 503 and Retry-After while `cap` requests are in flight. Its bytes go out as
    each step makes them: a StreamingResponse for a stream, one answer (with its status) for a
    whole one. When the client goes away, Starlette cancels the response, and the request is
    taken out before the next step.
    """

    def __init__(self, predictor: GenerationPredictor, cap: int):
        self.predictor, self.cap = predictor, cap
        self.queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.wake = threading.Event()
        threading.Thread(target=self.run, name="generation", daemon=True).start()

    def run(self) -> None:
        while True:
            if not self.predictor.jobs:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            for ident, out in self.predictor.step().items():
                loop, queue = self.queues.get(ident, (None, None))
                if loop is not None and queue is not None:
                    loop.call_soon_threadsafe(queue.put_nowait, out)
            time.sleep(0)  # let the event loop send what this step made (and take new requests) before the next

    async def answer(self, raw: bytes, protocol: str):
        from starlette.responses import Response, StreamingResponse

        predictor = self.predictor
        if len(predictor.jobs) >= self.cap:
            message = f"{len(predictor.jobs)} requests are being generated, this replica's cap; retry shortly"
            return _json(503, predictor.error(protocol, 503, message), headers={"Retry-After": str(RETRY_AFTER_S)})
        ident = uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[ident] = (asyncio.get_running_loop(), queue)
        try:
            job = await asyncio.to_thread(predictor.open, {"body": raw}, protocol, ident)
        except RequestError as exc:
            self.queues.pop(ident, None)
            return _json(exc.code, predictor.error(protocol, exc.code, str(exc)))
        self.wake.set()

        async def chunks():
            ended = False
            try:
                while not ended:
                    data, ended = await queue.get()
                    if data:
                        yield data
            finally:
                self.queues.pop(ident, None)
                if not ended:
                    predictor.cancel(ident)

        if job.ask.stream:
            return StreamingResponse(chunks(), media_type=job.media_type)
        body = b"".join([data async for data in chunks()])
        return Response(body, status_code=job.status, media_type=job.media_type)


DEFAULT_MAX_ONGOING = 64


def max_ongoing(options: RayAppOptions) -> int:
    """Requests a replica takes at once: at least twice the batch size, or batches never fill."""
    return max(2 * options.batch_size, 16) if options.batch_size else DEFAULT_MAX_ONGOING


def deployment_options(options: RayAppOptions) -> dict[str, Any]:
    """Replicas or autoscaling, resources, enough ongoing requests for batches to fill, and a bounded queue."""
    out: dict[str, Any] = {
        "max_ongoing_requests": max_ongoing(options),
        "max_queued_requests": options.max_queued_requests,
        "ray_actor_options": {
            "num_cpus": options.num_cpus,
            "num_gpus": options.num_gpus,
            # prometheus_client reads where to keep a process's figures once, at import: set from the process's start.
            **({"runtime_env": {"env_vars": {metrics.ENV: options.metrics_dir}}} if options.metrics_dir else {}),
        },
        "health_check_period_s": 2,
        "health_check_timeout_s": 10,
    }
    if options.replicas == "auto":
        out["autoscaling_config"] = {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
        }
    else:
        out["num_replicas"] = int(options.replicas)
    return out


def deployment(options: RayAppOptions):
    """The Serve deployment of ModelServer with these options (replicas or autoscaling, resources)."""
    from ray import serve

    return serve.deployment(name="ModelServer", **deployment_options(options))(ModelServer)


def build(args: dict[str, Any]):
    """The Serve application for `args` (see RayAppOptions): `serve run pipeline.serving.ray.app:build archive=...`."""
    options = RayAppOptions.from_args(dict(args))
    return deployment(options).bind(options.to_args())
