"""``synpro serve``: an OpenAI-compatible HTTP server for our models, backed by the in-graph sampler.

    GET  /v1/models              the one served model
    POST /v1/completions         prompt: str | [str] | [int] | [[int]]; max_tokens, temperature, top_p, top_k, n,
                                 stop, seed; returns choices (index = prompt * n + choice) and usage
    POST /v1/chat/completions    messages rendered with the model's chat template (OLMo-2); same knobs
    GET  /synpro/stats           device calls and their batch sizes (requests, rows)
    POST /synpro/faults          {"kind", "count", "delay_s"}: only with ``allow_fault_injection``

Starlette on uvicorn. Handlers parse, validate and tokenize in worker threads (never on the event loop), then wait
on a :class:`GenerationQueue` whose one device thread batches concurrent requests. Binds 127.0.0.1 by default.

Untrusted input: :class:`BodyLimitMiddleware` reads each request's body before the app does, refusing with 413 a
Content-Length over ``max_body_bytes`` before reading any of it (and a chunked body as soon as it passes the limit),
and with 408 a body that has not arrived whole within ``body_timeout_s``. Numbers must be finite (Python's json
reads 1e400 as infinity and takes NaN) and integer fields integral. Every error, a 404 or 405 included, is an
OpenAI error object ``{"error": {"message", "type", "param", "code"}}``: 4xx where the client is at fault, 5xx
(``server_error``) for the server's own.

Fault injection (for tests of remote clients): ``FaultInjector`` makes the next ``count`` generation requests
reply slowly (``slow``: sleep ``delay_s`` then answer), answer 503 (``5xx``), answer 200 with a cut-off JSON body
(``malformed``), or drop the connection after the status line (``drop``). Set at start (``--faults
slow:2:1.5,5xx:1`` or SYNPRO_SERVE_FAULTS) or at run time through POST /synpro/faults.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import secrets
import threading
import time
from typing import Any

from etils.epath import Path
import h11
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from synpro_jax import sharding
from synpro_jax.generation import prompts as prompts_lib
from synpro_jax.generation.continuous import ContinuousBatcher
from synpro_jax.generation.sampler import Sampler
from synpro_jax.serve.batching import ContinuousQueue, GenerationQueue, GenRequest, Knobs, QueueFull
from synpro_jax.train import model_source, params_io
from synpro_jax.train.model_source import open_source

MODEL_KNOBS = model_source.Knobs("--model", "--preset", "--vocab")

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
FAULT_KINDS = ("slow", "5xx", "malformed", "drop")
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
MIN_MAX_BODY_BYTES = 1 << 20  # the default body limit's floor: 1 MiB
DEFAULT_BODY_TIMEOUT_S = 10.0
MAX_STOPS = 4


class BadRequest(ValueError):
    """A request the server refuses: ``status`` (4xx the client's fault, 5xx the server's), the body field it is
    about (``param``) and a machine-readable ``code``; rendered as an OpenAI error object."""

    def __init__(self, message: str, status: int = 400, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def response(self) -> JSONResponse:
        return _error(str(self), self.status, param=self.param, code=self.code)


_STATUS_CODES = {
    400: "invalid_value",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
    503: "overloaded",
}


def _error(
    message: str, status: int, *, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    """An OpenAI error object: ``invalid_request_error`` for a 4xx, ``server_error`` for a 5xx."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code or _STATUS_CODES.get(status)}},
        status_code=status,
        headers=headers,
    )


def _field(path: Sequence[str | int]) -> str:
    """("messages", 0, "content") -> "messages[0].content"."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def check_json_values(body: Any) -> None:
    """Refuse a float that is not finite and a string that is not valid Unicode anywhere in ``body`` (json.loads
    takes NaN, Infinity and 1e400 = inf, and "\\ud800" = a lone surrogate), naming where. Iterative: JSON may nest
    as deep as the parser went."""
    stack: list[tuple[tuple, Any]] = [((), body)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                name = _field(path) or "the request body"
                raise BadRequest(
                    f"{name}={v}: not a finite number (JSON numbers must be finite; 1e400 overflows)",
                    param=_field(path) or None,
                )
        elif isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise BadRequest(
                        f"{_field(path) or 'the request body'}: a string with a lone surrogate (not valid Unicode)",
                        param=_field(path) or None,
                    ) from None
        elif isinstance(v, dict):
            for k, x in v.items():
                stack.append(((*path, k), k))
                if not isinstance(x, int):
                    stack.append(((*path, k), x))
        elif isinstance(v, list):
            stack.extend(((*path, i), x) for i, x in enumerate(v) if not isinstance(x, int))  # ints: token ids


def number(body: dict, name: str, default=None, *, integer: bool = False):
    """``body[name]`` as a finite float, or (``integer``) an int, where a float must be integral; ``default`` when
    absent or null. A bool, string or anything else is a 400 naming the field."""
    v = body.get(name)
    if v is None:
        return default
    want = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRequest(f"{name}={v!r}: expected {want}", param=name)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadRequest(f"{name}={v}: not a finite number", param=name)
        if integer:
            if not v.is_integer():
                raise BadRequest(f"{name}={v!r}: expected an integer", param=name)
            return int(v)
        return v
    if integer:
        return v
    try:
        return float(v)
    except OverflowError:  # an integer literal past a double's range
        raise BadRequest(
            f"{name}: {len(str(abs(v)))} digits overflow a double: not a finite number", param=name
        ) from None


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
            return await _error("injected fault: server error", 503, code="injected_fault")(scope, receive, send)
        if fault.kind == "malformed":
            body = b'{"id": "cmpl-fault", "object": "text_completion", "choices": [{"index": 0, "te'
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            return await send({"type": "http.response.body", "body": body})
        # drop: promise a body and never send it; the server closes the connection on the incomplete response
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        return None


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_name: str
    max_rows: int = 32
    max_queued: int = 256
    batch_wait_s: float = 0.005
    default_max_tokens: int = 16  # OpenAI's default for /v1/completions
    allow_fault_injection: bool = False
    # the largest request body taken (413 past it); None: max(1 MiB, 32 bytes a token for max_rows full contexts)
    max_body_bytes: int | None = None
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # a body must arrive whole within this (408 after)
    # "continuous": requests join the running decode as its max_rows slots free up; "static": one call per
    # batch of requests with equal knobs, ending with its longest row
    batching: str = "continuous"
    # the largest max_tokens a request may ask with continuous batching (None: half the model's context); the
    # KV cache holds max_rows x (max_seq_len + max_new_tokens) slots per layer
    max_new_tokens: int | None = None

    def __post_init__(self):
        if self.batching not in ("continuous", "static"):
            raise ValueError(f"ServeConfig.batching={self.batching!r}: choose continuous or static")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"ServeConfig.max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.max_body_bytes is not None and self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes={self.max_body_bytes} must be >= 1")
        if not self.body_timeout_s > 0:
            raise ValueError(f"body_timeout_s={self.body_timeout_s} must be > 0")

    def body_limit(self, max_seq_len: int) -> int:
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return max(MIN_MAX_BODY_BYTES, 32 * self.max_rows * max_seq_len)


@dataclasses.dataclass
class Prepared:
    """A validated request, ready for the queue."""

    request: GenRequest
    prompts: list[list[int]]
    stops: list[str]


class Engine:
    """Tokenizer + sampler + queue: turns OpenAI request bodies into generations.

    The ``*_prompt(s)`` / ``prepare`` / ``finish`` methods block (tokenizing, validating, decoding): the app runs
    them in worker threads, ``generate`` its own. They hold no lock: SentencePiece and HF tokenizers encode and
    decode from many threads at once, so one long prompt's tokenizing delays no other request."""

    def __init__(
        self, cfg, sampler, vocab, settings: ServeConfig, template: prompts_lib.ChatTemplate = prompts_lib.OLMO2_CHAT
    ):
        self.cfg, self.vocab, self.settings, self.template = cfg, vocab, settings, template
        stop_ids, pad_id = [int(vocab.eos_id)], int(getattr(vocab, "pad_id", 0))
        self.max_new_tokens = cfg.max_seq_len  # static batching: bounded by the context alone
        if settings.batching == "static":
            self.queue = GenerationQueue(
                sampler,
                stop_ids=stop_ids,
                pad_id=pad_id,
                max_rows=settings.max_rows,
                max_queued=settings.max_queued,
                batch_wait_s=settings.batch_wait_s,
            )
        else:
            self.max_new_tokens = min(settings.max_new_tokens or max(cfg.max_seq_len // 2, 1), cfg.max_seq_len - 1)
            shards = getattr(sampler, "batch_shards", 1)

            def make_batcher():
                return ContinuousBatcher(
                    sampler,
                    slots=-(-settings.max_rows // shards) * shards,
                    max_prompt_tokens=cfg.max_seq_len - 1,
                    max_new_tokens=self.max_new_tokens,
                    eos_id=stop_ids,
                    pad_id=pad_id,
                )

            self.queue = ContinuousQueue(
                make_batcher,
                max_rows=settings.max_rows,
                max_queued=settings.max_queued,
                batch_wait_s=settings.batch_wait_s,
            )
        self.max_body_bytes = settings.body_limit(cfg.max_seq_len)
        self._server_seed = secrets.randbelow(2**31)
        self._streams = itertools.count()
        self.created = int(time.time())

    # -- request parsing (blocking: run in a worker thread) ----------------------------------------------------
    def _encode(self, text: str, param: str = "prompt") -> list[int]:
        try:
            return [int(i) for i in self.vocab.encode(text)]
        except UnicodeError as e:
            raise BadRequest(f"{param}: the tokenizer cannot take this text ({e})", param=param) from None

    def _decode(self, ids: Sequence[int]) -> str:
        return self.vocab.decode(list(ids)) if ids else ""

    def _prompts(self, prompt) -> list[list[int]]:
        def ids(p):
            return isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)

        if isinstance(prompt, str):
            return [self._encode(prompt)]
        if isinstance(prompt, list) and prompt:
            if ids(prompt):
                return [list(prompt)]
            if len(prompt) > self.settings.max_rows:  # before tokenizing any of them
                raise BadRequest(
                    f"prompt: {len(prompt)} prompts exceed the server's max_rows={self.settings.max_rows}",
                    param="prompt",
                )
            if all(isinstance(p, str) for p in prompt):
                return [self._encode(p) for p in prompt]
            if all(ids(p) for p in prompt):
                return [list(p) for p in prompt]
        raise BadRequest(
            "prompt: a string, a list of strings, a list of token ids or a list of such lists", param="prompt"
        )

    def completion_prompts(self, body: dict) -> list[list[int]]:
        if body.get("prompt") is None:
            raise BadRequest("prompt is required", param="prompt")
        return self._prompts(body["prompt"])

    def render_chat(self, messages) -> str:
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: a non-empty list of {role, content}", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content", ""), str):
                raise BadRequest(f"messages[{i}]: an object with a string content", param=f"messages[{i}]")
        try:
            return self.template.render(messages, add_generation_prompt=True)
        except ValueError as e:
            raise BadRequest(str(e), param="messages") from None

    def chat_prompt(self, body: dict) -> list[int]:
        return self._encode(self.render_chat(body.get("messages")), "messages")

    def _knobs(self, body: dict) -> tuple[Knobs, int, bool]:
        temperature = number(body, "temperature", 1.0)
        top_p = number(body, "top_p", 1.0)
        top_k = number(body, "top_k", -1, integer=True)
        n = number(body, "n", 1, integer=True)
        seed = number(body, "seed", integer=True)
        for name in ("presence_penalty", "frequency_penalty"):  # taken and ignored, as many servers do
            number(body, name)
        if temperature < 0:
            raise BadRequest(f"temperature={temperature}: must be >= 0", param="temperature")
        if not 0 < top_p <= 1:
            raise BadRequest(f"top_p={top_p}: must be in (0, 1]", param="top_p")
        if n < 1:
            raise BadRequest(f"n={n}: must be >= 1", param="n")
        if n > self.settings.max_rows:
            raise BadRequest(f"n={n}: more choices than the server's max_rows={self.settings.max_rows}", param="n")
        if body.get("stream"):
            raise BadRequest("stream=true is not supported", param="stream")
        for name, off in (("logprobs", (None, False, 0)), ("echo", (None, False))):
            if body.get(name) not in off:
                raise BadRequest(f"{name} is not supported", param=name)
        greedy = temperature == 0
        # top-k over the whole vocabulary is no top-k (and a huge k must not reach the sampler)
        top_k = None if top_k < 1 or top_k >= self.cfg.vocab_size else top_k
        # Greedy rows batch with any seed; unseeded sampling shares the server seed and takes fresh streams.
        knobs = Knobs(
            temperature,
            top_k,
            None if top_p >= 1 else top_p,
            0 if greedy else (self._server_seed if seed is None else seed % 2**32),
        )
        return knobs, n, seed is None and not greedy

    def _stops(self, body: dict) -> list[str]:
        stop = body.get("stop")
        stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
            raise BadRequest(f"stop: a string or a list of at most {MAX_STOPS} non-empty strings", param="stop")
        return stops

    def prepare(self, token_prompts: list[list[int]], body: dict, default_max_tokens: int) -> Prepared:
        """Validate the knobs, budgets and prompts of ``body`` into a :class:`GenRequest` (not yet queued)."""
        knobs, n, fresh_streams = self._knobs(body)
        stops = self._stops(body)
        model = body.get("model")
        if model not in (None, self.settings.model_name):
            raise BadRequest(
                f"model {model!r} is not served here (this server serves {self.settings.model_name!r})",
                status=404,
                param="model",
                code="model_not_found",
            )
        if len(token_prompts) * n > self.settings.max_rows:
            raise BadRequest(
                f"{len(token_prompts)} prompts x n={n} rows exceed the server's max_rows="
                f"{self.settings.max_rows}; send fewer prompts or choices per request",
                param="n",
            )
        limit = self.cfg.max_seq_len
        longest = max(len(p) for p in token_prompts)
        name = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
        max_tokens = number(body, name, integer=True)
        if max_tokens is None:
            max_tokens = min(default_max_tokens, self.max_new_tokens, limit - longest)
        if max_tokens < 1:
            raise BadRequest(
                f"{name}={max_tokens!r}: a positive integer"
                if longest < limit
                else f"the prompt has {longest} tokens: no room in the model's context of {limit} tokens",
                param=name if longest < limit else "prompt",
            )
        for i, p in enumerate(token_prompts):
            if not p:
                raise BadRequest(f"prompt {i} is empty", param="prompt")
            if min(p) < 0 or max(p) >= self.cfg.vocab_size:
                raise BadRequest(
                    f"prompt {i} has token ids outside the vocabulary [0, {self.cfg.vocab_size})", param="prompt"
                )
            if len(p) + max_tokens > limit:
                raise BadRequest(
                    f"prompt {i} has {len(p)} tokens; with {name}={max_tokens} it exceeds the "
                    f"model's context of {limit} tokens",
                    param=name,
                )
        if self.settings.batching == "continuous" and max_tokens > self.max_new_tokens:
            raise BadRequest(
                f"{name}={max_tokens}: this server generates at most {self.max_new_tokens} tokens per completion "
                "(ServeConfig.max_new_tokens)",
                param=name,
            )
        rows = [p for p in token_prompts for _ in range(n)]
        if fresh_streams:
            streams = [next(self._streams) % 2**31 for _ in rows]
        else:
            streams = list(range(len(rows)))
        return Prepared(GenRequest(rows, [max_tokens] * len(rows), streams, knobs), token_prompts, stops)

    def finish(self, prepared: Prepared, results) -> tuple[list, dict]:
        """Decode and cut at the stop strings: (choices as (index, text, finish_reason, tokens), usage)."""
        choices = []
        for i, res in enumerate(results):
            text = self._decode(res.tokens)
            reason = "stop" if res.finished else "length"
            cut = min((text.find(s) for s in prepared.stops if s in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            choices.append((i, text, reason, res.generated))
        usage = {
            "prompt_tokens": sum(len(p) for p in prepared.prompts),
            "completion_tokens": sum(c[3] for c in choices),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return choices, usage

    # -- generation ------------------------------------------------------------------------------------------
    async def generate(self, token_prompts: list[list[int]], body: dict, default_max_tokens: int):
        prepared = await asyncio.to_thread(self.prepare, token_prompts, body, default_max_tokens)
        try:
            future = self.queue.submit(prepared.request)
        except QueueFull as e:
            raise BadRequest(str(e), status=503) from None
        except ValueError as e:
            raise BadRequest(str(e)) from None
        try:
            results = await asyncio.wrap_future(future)
        except Exception as e:  # the device call failed: a 500 naming it, the server keeps serving
            raise BadRequest(f"generation failed: {type(e).__name__}: {e}", status=500, code="generation_failed") from e
        return await asyncio.to_thread(self.finish, prepared, results)

    def close(self):
        self.queue.close()


def _parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("the request body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    check_json_values(body)
    return body


async def _json_body(request: Request) -> dict:
    """The body as a JSON object, parsed off the event loop; a content type other than JSON is a 415."""
    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";")[0].strip().lower()
    if mime and mime != "application/json" and not mime.endswith("+json"):
        raise BadRequest(f"content type {content_type!r}: send application/json", status=415)
    return await asyncio.to_thread(_parse_json, await request.body())


class BodyLimitMiddleware:
    """Pure ASGI: reads each HTTP request's body before the app sees it, and hands the app the whole body.

    A Content-Length over ``max_body_bytes`` is a 413 before any of the body is read; a body without one (chunked)
    is a 413 as soon as it passes the limit; a body that has not arrived whole within ``body_timeout_s`` (in all,
    not between reads: a trickle is bounded too) is a 408. Either closes the connection, whose unread rest would
    otherwise be taken for the next request."""

    def __init__(self, app, max_body_bytes: int, body_timeout_s: float):
        self.app, self.max_body_bytes, self.body_timeout_s = app, max_body_bytes, body_timeout_s

    def _refuse(self, message: str, status: int):
        return _error(message, status, headers={"connection": "close"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        lengths = [v for k, v in scope["headers"] if k == b"content-length"]
        if lengths:
            try:
                length = int(lengths[0])
            except ValueError:  # uvicorn's h11 refuses these first; another server might not
                return await self._refuse(f"Content-Length {lengths[0]!r} is not a number", 400)(scope, receive, send)
            if length > self.max_body_bytes:
                return await self._refuse(
                    f"the request body has {length} bytes (Content-Length); this server takes at most "
                    f"{self.max_body_bytes} (max_body_bytes)",
                    413,
                )(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                return await self._refuse(
                    f"the request body did not arrive in full within {self.body_timeout_s:g} s ({size} bytes came)", 408
                )(scope, receive, send)
            if message["type"] == "http.disconnect":
                return None  # the client is gone: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await self._refuse(f"the request body passed {self.max_body_bytes} bytes (max_body_bytes)", 413)(
                    scope, receive, send
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _lifespan(engine: Engine):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    return lifespan


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route: 404; a method the route lacks: 405) as OpenAI error objects."""
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return _error(message.get(exc.status_code, str(exc.detail)), exc.status_code, headers=exc.headers)


async def _server_fault(request: Request, exc: Exception) -> JSONResponse:
    """Any other exception: a JSON 500 (Starlette then re-raises it, so the server logs the traceback)."""
    return _error(f"internal server error: {type(exc).__name__}", 500)


def build_app(engine: Engine, injector: FaultInjector | None = None):
    settings = engine.settings
    injector = injector or FaultInjector()

    async def models_route(request: Request):
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": settings.model_name,
                        "object": "model",
                        "created": engine.created,
                        "owned_by": "synpro_jax",
                        "max_model_len": engine.cfg.max_seq_len,
                    }
                ],
            }
        )

    async def completions(request: Request):
        try:
            body = await _json_body(request)
            prompts = await asyncio.to_thread(engine.completion_prompts, body)
            choices, usage = await engine.generate(prompts, body, settings.default_max_tokens)
        except BadRequest as e:
            return e.response()
        return JSONResponse(
            {
                "id": f"cmpl-{secrets.token_hex(8)}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": settings.model_name,
                "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": r} for i, t, r, _ in choices],
                "usage": usage,
            }
        )

    async def chat(request: Request):
        try:
            body = await _json_body(request)
            prompt = await asyncio.to_thread(engine.chat_prompt, body)
            choices, usage = await engine.generate(
                [prompt], body, min(256, engine.max_new_tokens, engine.cfg.max_seq_len - len(prompt))
            )
        except BadRequest as e:
            return e.response()
        return JSONResponse(
            {
                "id": f"chatcmpl-{secrets.token_hex(8)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": settings.model_name,
                "choices": [
                    {"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": r}
                    for i, t, r, _ in choices
                ],
                "usage": usage,
            }
        )

    async def stats(request: Request):
        return JSONResponse(
            {
                "batches": [list(b) for b in engine.queue.batches],
                "stats": dict(engine.queue.stats),
                "faults_injected": dict(injector.injected),
            }
        )

    async def faults(request: Request):
        if not settings.allow_fault_injection:
            return _error("fault injection is off (start the server with --allow_fault_injection)", 403)
        try:
            body = await _json_body(request)
            if body.get("clear"):
                injector.clear()
                return JSONResponse({"ok": True})
            count, delay_s = number(body, "count", 1, integer=True), number(body, "delay_s", 1.0)
            try:
                fault = Fault(str(body.get("kind")), count, delay_s)
            except ValueError as e:
                raise BadRequest(str(e)) from None
            injector.add(fault)
        except BadRequest as e:
            return e.response()
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/v1/models", models_route, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/synpro/stats", stats, methods=["GET"]),
            Route("/synpro/faults", faults, methods=["POST"]),
        ],
        lifespan=_lifespan(engine),
        exception_handlers={HTTPException: _http_error, Exception: _server_fault},
    )
    return BodyLimitMiddleware(FaultMiddleware(app, injector), engine.max_body_bytes, settings.body_timeout_s)


def _h11_protocol():
    """uvicorn's h11 protocol, whose own answer to a request it cannot parse (a 400 before any app runs: a bad
    Content-Length, a malformed request line, headers past h11's limit) is an OpenAI error object too."""

    class JSONErrorH11Protocol(H11Protocol):
        def error_body(self, message: str) -> dict:
            """The 400's JSON (the influence service's subclass answers in its own shape)."""
            return {
                "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "malformed_http"}
            }

        def send_400_response(self, msg: str) -> None:
            body = json.dumps(self.error_body(f"malformed HTTP request: {msg}")).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JSONErrorH11Protocol


def uvicorn_options() -> dict:
    """The uvicorn settings ``serve`` runs with (tests serving in a thread take the same)."""
    return {"log_level": "warning", "timeout_graceful_shutdown": 5, "http": _h11_protocol()}


def load_engine(
    model: str,
    *,
    vocab: Any = None,
    preset: str | None = None,
    dtype: str | None = None,
    all_devices: bool = False,
    settings: dict | None = None,
) -> Engine:
    """An :class:`Engine` for an HF OLMo-2 directory or a synpro run/checkpoint directory (needs ``preset``),
    opened by the one rule of train/model_source.py. ``vocab``: a path for data.vocab.load_vocabulary or a
    seqio.Vocabulary; default: found in the directory."""
    path = Path(model)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1)) if all_devices else sharding.single_device_mesh()
    source = open_source(path, preset, vocabulary=vocab, dtype=dtype, knobs=MODEL_KNOBS)
    cfg, vocab_obj = source.config, source.vocab
    params, step = params_io.load_params_and_step(cfg, mesh, path)
    log.info("loaded %s at step %d", path, step)
    sampler = Sampler(cfg, params, mesh=mesh)
    name = (settings or {}).pop("model_name", None) or path.absolute().name
    return Engine(cfg, sampler, vocab_obj, ServeConfig(model_name=name, **(settings or {})))


def serve(
    model: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    vocab: str | None = None,
    preset: str | None = None,
    dtype: str | None = None,
    all_devices: bool = False,
    faults: str | None = None,
    **settings,
) -> None:
    """Load the model and serve until interrupted. ``settings``: :class:`ServeConfig` fields (max_rows,
    batch_wait_s, max_body_bytes, body_timeout_s, ...)."""

    fault_list = parse_faults(faults if faults is not None else os.environ.get("SYNPRO_SERVE_FAULTS"))
    if fault_list:
        settings["allow_fault_injection"] = True
    engine = load_engine(model, vocab=vocab, preset=preset, dtype=dtype, all_devices=all_devices, settings=settings)
    app = build_app(engine, FaultInjector(fault_list))
    print(
        f"synpro serve: {engine.settings.model_name} on http://{host}:{port}/v1 (requests up to "
        f"{engine.max_body_bytes} bytes)",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, **uvicorn_options())
