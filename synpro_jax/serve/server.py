"""``synpro serve``: an OpenAI-compatible HTTP server for our models, backed by the in-graph sampler.

    GET  /v1/models              the one served model
    POST /v1/completions         prompt: str | [str] | [int] | [[int]]; max_tokens, temperature, top_p, top_k, n,
                                 stop, seed; returns choices (index = prompt * n + choice) and usage
    POST /v1/chat/completions    messages rendered with the model's chat template (OLMo-2); same knobs
    GET  /synpro/stats           device calls and their batch sizes (requests, rows)
    POST /synpro/faults          {"kind", "count", "delay_s"}: only with ``allow_fault_injection``

Starlette on uvicorn. Handlers tokenize and validate, then wait on a :class:`GenerationQueue` whose one device
thread batches concurrent requests. Binds 127.0.0.1 by default.

Fault injection (for tests of remote clients): ``FaultInjector`` makes the next ``count`` generation requests
reply slowly (``slow``: sleep ``delay_s`` then answer), answer 503 (``5xx``), answer 200 with a cut-off JSON body
(``malformed``), or drop the connection after the status line (``drop``). Set at start (``--faults
slow:2:1.5,5xx:1`` or SYNPRO_SERVE_FAULTS) or at run time through POST /synpro/faults.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import secrets
import threading
import time
from typing import Any, Sequence

from etils.epath import Path
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from synpro_jax.generation import prompts as prompts_lib
from synpro_jax.serve.batching import GenerationQueue, GenRequest, Knobs, QueueFull

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
FAULT_KINDS = ("slow", "5xx", "malformed", "drop")
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Fault:
    kind: str
    count: int
    delay_s: float = 0.0

    def __post_init__(self):
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r}: one of {FAULT_KINDS}")
        if self.count < 1 or self.delay_s < 0:
            raise ValueError(f"fault {self.kind}: count={self.count} must be >= 1 and delay_s={self.delay_s} >= 0")


def parse_faults(spec: str | None) -> list[Fault]:
    """``"slow:2:1.5,5xx:1,malformed:1,drop:1"`` -> faults applied in that order (KIND:COUNT[:DELAY_S])."""
    faults = []
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        bits = part.split(":")
        try:
            if not 2 <= len(bits) <= 3:
                raise ValueError("expected KIND:COUNT[:DELAY_S]")
            faults.append(Fault(bits[0], int(bits[1]), float(bits[2]) if len(bits) == 3 else 1.0))
        except ValueError as e:
            raise ValueError(f"--faults / SYNPRO_SERVE_FAULTS entry {part!r}: {e}") from None
    return faults


class FaultInjector:
    """Faults for the next generation requests, first queued first used; thread-safe."""

    def __init__(self, faults: Sequence[Fault] = ()):
        self._pending: collections.deque[Fault] = collections.deque(dataclasses.replace(f) for f in faults)
        self._lock = threading.Lock()
        self.injected: collections.Counter = collections.Counter()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._pending.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def take(self) -> Fault | None:
        with self._lock:
            if not self._pending:
                return None
            fault = self._pending[0]
            fault.count -= 1
            if fault.count == 0:
                self._pending.popleft()
            self.injected[fault.kind] += 1
            return Fault(fault.kind, 1, fault.delay_s)


class FaultMiddleware:
    """Pure ASGI wrapper applying :class:`FaultInjector` faults to the generation endpoints."""

    def __init__(self, app, injector: FaultInjector):
        self.app, self.injector = app, injector

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        fault = self.injector.take()
        if fault is None:
            return await self.app(scope, receive, send)
        log.warning("injecting fault %s on %s", fault.kind, scope["path"])
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
            return await self.app(scope, receive, send)
        if fault.kind == "5xx":
            body = json.dumps({"error": {"message": "injected fault: server error", "type": "server_error"}})
            return await JSONResponse(json.loads(body), status_code=503)(scope, receive, send)
        if fault.kind == "malformed":
            body = b'{"id": "cmpl-fault", "object": "text_completion", "choices": [{"index": 0, "te'
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        # drop: promise a body and never send it; the server closes the connection on the incomplete response
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
        return None


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_name: str
    max_rows: int = 32
    max_queued: int = 256
    batch_wait_s: float = 0.005
    default_max_tokens: int = 16  # OpenAI's default for /v1/completions
    allow_fault_injection: bool = False


class Engine:
    """Tokenizer + sampler + queue: turns OpenAI request bodies into generations."""

    def __init__(self, cfg, sampler, vocab, settings: ServeConfig,
                 template: prompts_lib.ChatTemplate = prompts_lib.OLMO2_CHAT):
        self.cfg, self.vocab, self.settings, self.template = cfg, vocab, settings, template
        self.queue = GenerationQueue(sampler, stop_ids=[int(vocab.eos_id)], pad_id=int(getattr(vocab, "pad_id", 0)),
                                     max_rows=settings.max_rows, max_queued=settings.max_queued,
                                     batch_wait_s=settings.batch_wait_s)
        self._server_seed = secrets.randbelow(2**31)
        self._streams = itertools.count()
        self._tok_lock = threading.Lock()
        self.created = int(time.time())

    # -- request parsing ------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        with self._tok_lock:
            return [int(i) for i in self.vocab.encode(text)]

    def _decode(self, ids: Sequence[int]) -> str:
        with self._tok_lock:
            return self.vocab.decode(list(ids)) if ids else ""

    def _prompts(self, prompt) -> list[list[int]]:
        if isinstance(prompt, str):
            return [self._encode(prompt)]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, str) for p in prompt):
                return [self._encode(p) for p in prompt]
            if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
                return [list(prompt)]
            if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
                return [list(p) for p in prompt]
        raise BadRequest("prompt: a string, a list of strings, a list of token ids or a list of such lists")

    def render_chat(self, messages) -> str:
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: a non-empty list of {role, content}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content", ""), str):
                raise BadRequest(f"messages[{i}]: an object with a string content")
        try:
            return self.template.render(messages, add_generation_prompt=True)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def _knobs(self, body: dict) -> tuple[Knobs, int, bool]:
        def number(name, default, kind=float):
            v = body.get(name, default)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
                raise BadRequest(f"{name}={v!r}: expected a number")
            return kind(v)

        temperature = number("temperature", 1.0)
        top_p = number("top_p", 1.0)
        top_k = number("top_k", -1, int)
        n = number("n", 1, int)
        seed = body.get("seed")
        if temperature < 0:
            raise BadRequest(f"temperature={temperature}: must be >= 0")
        if not 0 < top_p <= 1:
            raise BadRequest(f"top_p={top_p}: must be in (0, 1]")
        if n < 1:
            raise BadRequest(f"n={n}: must be >= 1")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise BadRequest(f"seed={seed!r}: expected an integer")
        if body.get("stream"):
            raise BadRequest("stream=true is not supported")
        if body.get("logprobs") not in (None, False, 0) or body.get("echo"):
            raise BadRequest("logprobs and echo are not supported")
        greedy = temperature == 0
        # Greedy rows batch with any seed; unseeded sampling shares the server seed and takes fresh streams.
        knobs = Knobs(temperature, None if top_k < 1 else top_k, None if top_p >= 1 else top_p,
                      0 if greedy else (self._server_seed if seed is None else seed % 2**32))
        return knobs, n, seed is None and not greedy

    def _stops(self, body: dict) -> list[str]:
        stop = body.get("stop")
        stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
            raise BadRequest("stop: a string or a list of at most 4 non-empty strings")
        return stops

    # -- generation ------------------------------------------------------------------------------------------
    async def generate(self, token_prompts: list[list[int]], body: dict, default_max_tokens: int):
        knobs, n, fresh_streams = self._knobs(body)
        stops = self._stops(body)
        model = body.get("model")
        if model not in (None, self.settings.model_name):
            raise BadRequest(f"model {model!r} is not served here (this server serves "
                             f"{self.settings.model_name!r})", status=404)
        limit = self.cfg.max_seq_len
        longest = max(len(p) for p in token_prompts)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is None:
            max_tokens = min(default_max_tokens, limit - longest)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest(f"max_tokens={max_tokens!r}: a positive integer")
        for i, p in enumerate(token_prompts):
            if not p:
                raise BadRequest(f"prompt {i} is empty")
            if min(p) < 0 or max(p) >= self.cfg.vocab_size:
                raise BadRequest(f"prompt {i} has token ids outside the vocabulary [0, {self.cfg.vocab_size})")
            if len(p) + max_tokens > limit:
                raise BadRequest(f"prompt {i} has {len(p)} tokens; with max_tokens={max_tokens} it exceeds the "
                                 f"model's context of {limit} tokens")
        rows = [p for p in token_prompts for _ in range(n)]
        if fresh_streams:
            streams = [next(self._streams) % 2**31 for _ in rows]
        else:
            streams = list(range(len(rows)))
        request = GenRequest(rows, [max_tokens] * len(rows), streams, knobs)
        try:
            future = self.queue.submit(request)
        except QueueFull as e:
            raise BadRequest(str(e), status=503) from None
        except ValueError as e:
            raise BadRequest(str(e)) from None
        try:
            results = await asyncio.wrap_future(future)
        except Exception as e:  # the device call failed: a 500 naming it, the server keeps serving
            raise BadRequest(f"generation failed: {type(e).__name__}: {e}", status=500) from e
        choices = []
        for i, res in enumerate(results):
            text = self._decode(res.tokens)
            reason = "stop" if res.finished else "length"
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            choices.append((i, text, reason, res.generated))
        usage = {"prompt_tokens": sum(len(p) for p in token_prompts),
                 "completion_tokens": sum(c[3] for c in choices)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return choices, usage

    def close(self):
        self.queue.close()


def _error(message: str, status: int) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _lifespan(engine: Engine):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()
    return lifespan


def build_app(engine: Engine, injector: FaultInjector | None = None):
    settings = engine.settings
    injector = injector or FaultInjector()

    async def models_route(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": settings.model_name, "object": "model", "created": engine.created, "owned_by": "synpro_jax",
             "max_model_len": engine.cfg.max_seq_len}]})

    async def completions(request: Request):
        try:
            body = await _json_body(request)
            if "prompt" not in body:
                raise BadRequest("prompt is required")
            choices, usage = await engine.generate(engine._prompts(body["prompt"]), body,
                                                   settings.default_max_tokens)
        except BadRequest as e:
            return _error(str(e), e.status)
        return JSONResponse({
            "id": f"cmpl-{secrets.token_hex(8)}", "object": "text_completion", "created": int(time.time()),
            "model": settings.model_name,
            "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": r} for i, t, r, _ in choices],
            "usage": usage})

    async def chat(request: Request):
        try:
            body = await _json_body(request)
            text = engine.render_chat(body.get("messages"))
            prompt = engine._encode(text)
            choices, usage = await engine.generate([prompt], body, min(256, engine.cfg.max_seq_len - len(prompt)))
        except BadRequest as e:
            return _error(str(e), e.status)
        return JSONResponse({
            "id": f"chatcmpl-{secrets.token_hex(8)}", "object": "chat.completion", "created": int(time.time()),
            "model": settings.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                         "finish_reason": r} for i, t, r, _ in choices],
            "usage": usage})

    async def stats(request: Request):
        return JSONResponse({"batches": [list(b) for b in engine.queue.batches],
                             "stats": dict(engine.queue.stats), "faults_injected": dict(injector.injected)})

    async def faults(request: Request):
        if not settings.allow_fault_injection:
            return _error("fault injection is off (start the server with --allow_fault_injection)", 403)
        try:
            body = await _json_body(request)
            if body.get("clear"):
                injector.clear()
                return JSONResponse({"ok": True})
            injector.add(Fault(str(body.get("kind")), int(body.get("count", 1)), float(body.get("delay_s", 1.0))))
        except (BadRequest, ValueError, TypeError) as e:
            return _error(str(e), 400)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[
        Route("/v1/models", models_route, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/synpro/stats", stats, methods=["GET"]),
        Route("/synpro/faults", faults, methods=["POST"]),
    ], lifespan=_lifespan(engine))
    return FaultMiddleware(app, injector)


def default_vocab_path(model_dir: Path) -> Path:
    from synpro_jax.data.vocab import find_vocabulary

    found = find_vocabulary(model_dir)
    if found is not None:
        return found
    raise FileNotFoundError(f"--model {model_dir}: no tokenizer.json or SentencePiece .model in it; pass --vocab")


def load_engine(model: str, *, vocab: Any = None, preset: str | None = None, dtype: str | None = None,
                all_devices: bool = False, settings: dict | None = None) -> Engine:
    """An :class:`Engine` for an HF OLMo-2 directory or a synpro run/checkpoint directory (needs ``preset``).
    ``vocab``: a path for data.vocab.load_vocabulary or a seqio.Vocabulary; default: found in the directory."""
    from synpro_jax import models, sharding
    from synpro_jax.data.vocab import load_vocabulary
    from synpro_jax.generation.sampler import Sampler
    from synpro_jax.models import hf
    from synpro_jax.train import params_io

    path = Path(model)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1)) if all_devices else sharding.single_device_mesh()
    if params_io.is_hf_dir(path):
        cfg, params = hf.load(path)
    else:
        if preset is None:
            raise ValueError(f"--model {path}: not an HF directory (no config.json), so name the run's model with "
                             "--preset")
        cfg = models.get_preset(preset)
        params, step = params_io.load_params_and_step(cfg, mesh, path)
        log.info("loaded %s at step %d", path, step)
    if dtype:
        cfg = cfg.replace(dtype=dtype)
    vocab_obj = load_vocabulary(vocab if vocab is not None else str(default_vocab_path(path)))
    if vocab_obj.vocab_size > cfg.vocab_size:
        raise ValueError(f"--vocab {vocab}: {vocab_obj.vocab_size} tokens but the model has {cfg.vocab_size}")
    sampler = Sampler(cfg, params, mesh=mesh)
    name = (settings or {}).pop("model_name", None) or path.absolute().name
    return Engine(cfg, sampler, vocab_obj, ServeConfig(model_name=name, **(settings or {})))


def serve(model: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, vocab: str | None = None,
          preset: str | None = None, dtype: str | None = None, all_devices: bool = False, faults: str | None = None,
          **settings) -> None:
    """Load the model and serve until interrupted."""
    import uvicorn

    fault_list = parse_faults(faults if faults is not None else os.environ.get("SYNPRO_SERVE_FAULTS"))
    if fault_list:
        settings["allow_fault_injection"] = True
    engine = load_engine(model, vocab=vocab, preset=preset, dtype=dtype, all_devices=all_devices, settings=settings)
    app = build_app(engine, FaultInjector(fault_list))
    print(f"synpro serve: {engine.settings.model_name} on http://{host}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
