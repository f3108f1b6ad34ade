"""HTTP influence service with the SynPro release's contract, so external trainers can call it.

    POST /get_influence  {"texts": [...]}  ->  {"influence_scores": [...], "loss_before": [...], "loss_after": [...]}
    GET  /health                          ->  {"status": "ok"}

Binds 127.0.0.1:24775 by default (the port the release's client calls). A Starlette app on uvicorn, the stack of
``synpro serve``: handlers run on uvicorn's event loop and parse, validate and tokenize in worker threads, so a
text that fails to encode fails only its request (400 naming the index). A request holding a text that cannot be
scored is refused whole, before anything is scored, with a 400 naming each such text's index and why: a lone
UTF-16 surrogate (JSON ``"\\ud800"``: not Unicode text, so no tokenizer can encode it), or fewer than 2 tokens after
tokenization (``""``, ``"a"``: a text of T tokens has T - 1 next-token predictions, so there is no loss to compare
and no influence to report).

The token lists then wait in a bounded queue (full: 503 with Retry-After). One device thread takes up to
``batch_size`` texts at a time from one or several requests, sorts them by length and scores them in
``[batch_size, bucket + 1]`` blocks, where ``bucket`` is a power of two (at least ``min_bucket``, at most the
probe's ``max_len``): short texts are not padded to ``max_len`` and there are only a few shapes to compile.

Untrusted input: a POST must declare its length (Content-Length; none, or chunked: 411) within ``max_body_bytes``
(413), both refused before any of the body is read; h11 refuses a Content-Length that is not one non-negative
integer (400). serve's :class:`BodyLimitMiddleware` then reads the body, which must arrive whole within
``socket_timeout_s`` (408); one the client cuts short is a 400. A connection that has not sent a request's headers
within ``socket_timeout_s`` (new, or kept alive after an answer) is closed. A request whose client disconnected or
whose wait passed ``timeout_s`` is cancelled: its texts are dropped from the queue, or skipped in later blocks if
scoring had started. Every error is ``{"error": "..."}`` (with ``index`` and ``indices`` where texts are at fault).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
import concurrent.futures
import dataclasses
import json
import logging
import math
import socket
import threading
import time
from typing import Any

import h11
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
import uvicorn

from synpro_jax.device_queue import DeviceQueue, QueueFull
from synpro_jax.serve.server import BodyLimitMiddleware, _h11_protocol, uvicorn_options

log = logging.getLogger(__name__)

DEFAULT_PORT = 24775  # generator/data_influence_reward.py in the release calls 127.0.0.1:24775
_SCORE_KEYS = ("influence", "loss_before", "loss_after")
MIN_TOKENS = 2  # a text of T tokens is scored on its T - 1 next-token predictions
_MAX_NAMED = 10  # texts named in one refusal's message (all are in its "indices")
_BACKLOG = 128  # listen backlog: bursts of clients wait in the kernel, not refused
_ROUTES = "use GET /health or POST /get_influence"


@dataclasses.dataclass(eq=False)
class Job:
    """One request's documents (token ids, cut to ``max_len + 1``) and the future its handler waits on."""

    docs: list[np.ndarray]
    future: concurrent.futures.Future
    deadline: float
    abandoned: bool = False  # the client left after scoring began: skip its texts not yet scored


def bucket_width(num_tokens: int, max_len: int, min_bucket: int = 16) -> int:
    """Row width for a document of ``num_tokens`` tokens: a power-of-two number of predictions (>= min_bucket,
    capped at max_len) plus one, since a row of T tokens scores T - 1 next-token predictions."""
    predictions = max(int(num_tokens) - 1, 1)
    return min(max(min_bucket, 1 << (predictions - 1).bit_length()), max_len) + 1


class ScoringQueue(DeviceQueue[Job]):
    """Scores queued jobs on the device, one fixed-shape block at a time, in a single background thread.

    ``probe`` needs only ``score(tokens [B, T] int32, mask [B, T]) -> {"influence", "loss_before",
    "loss_after"}`` ([B] arrays) and ``max_len``.
    """

    def __init__(self, probe: Any, batch_size: int, pad_id: int = 0, max_queued: int = 64, min_bucket: int = 16):
        if batch_size < 1 or min_bucket < 1:
            raise ValueError(f"ScoringQueue: batch_size={batch_size} and min_bucket={min_bucket} must be >= 1")
        super().__init__(max_queued=max_queued, thread_name="influence-device")  # stats: texts_scored, ...
        self.probe, self.batch_size, self.pad_id, self.min_bucket = probe, batch_size, pad_id, min_bucket
        self._start()

    @property
    def max_len(self) -> int:
        return int(self.probe.max_len)

    def submit(self, docs: Sequence[Sequence[int]], timeout_s: float) -> Job:
        """Queue one request's token lists; raises :class:`QueueFull` rather than waiting."""
        job = Job(
            [np.asarray(d[: self.max_len + 1], np.int32) for d in docs],
            concurrent.futures.Future(),
            time.monotonic() + timeout_s,
        )
        self._enqueue(job)
        return job

    def abandon(self, job: Job) -> None:
        """The job's client has gone or its wait timed out: drop it from the queue, or stop scoring it."""
        with self._cv:
            if job.future.done():  # answered just now: nothing left to cancel
                return
            if job.future.cancel():
                try:
                    self._queue.remove(job)
                except ValueError:
                    pass
            else:
                job.abandoned = True
            self.stats["requests_cancelled"] += 1

    def _take(self) -> list[Job] | None:
        """Running jobs holding at least ``batch_size`` texts (or all that wait); None once closed."""
        with self._cv:
            while True:
                if not self._wait_for_items():
                    return None
                taken, count, now = [], 0, time.monotonic()
                while self._queue and count < self.batch_size:
                    job = self._queue.popleft()
                    if now > job.deadline:  # its handler is about to give up on it anyway
                        job.future.cancel()
                        self.stats["requests_expired"] += 1
                        continue
                    if job.future.set_running_or_notify_cancel():
                        taken.append(job)
                        count += len(job.docs)
                if taken:
                    return taken

    def _run(self, jobs: list[Job]) -> None:
        results = [{k: np.zeros(len(job.docs), np.float32) for k in _SCORE_KEYS} for job in jobs]
        # Shortest first, so each block holds texts of similar length and pads to a small bucket.
        items = sorted((len(doc), j, i) for j, job in enumerate(jobs) for i, doc in enumerate(job.docs))
        while items:
            items = [it for it in items if not jobs[it[1]].abandoned]
            block, items = items[: self.batch_size], items[self.batch_size :]
            if not block:
                break
            width = bucket_width(max(n for n, _, _ in block), self.max_len, self.min_bucket)
            tokens = np.full((self.batch_size, width), self.pad_id, np.int32)
            mask = np.zeros((self.batch_size, width), np.float32)
            for row, (n, j, i) in enumerate(block):
                tokens[row, :n] = jobs[j].docs[i]
                mask[row, :n] = 1.0
            scores = self.probe.score(tokens, mask)
            self.stats["texts_scored"] += len(block)
            self.stats["blocks"] += 1
            for row, (_, j, i) in enumerate(block):
                for k in _SCORE_KEYS:
                    results[j][k][i] = scores[k][row]
        for job, res in zip(jobs, results):
            if not job.abandoned:
                job.future.set_result({k: v.tolist() for k, v in res.items()})


def _encode_all(
    encode: Callable[[list[str]], list[list[int]]], lock: threading.Lock, texts: list[str]
) -> tuple[list[list[int]] | None, int | None, str]:
    """(token ids, None, "") or (None, index of the first text that fails, why). One batch call normally; text by
    text only after it fails, to name the culprit."""
    try:
        with lock:
            ids = encode(texts)
        if len(ids) == len(texts):
            return list(ids), None, ""
    except Exception:
        pass
    ids = []
    for i, text in enumerate(texts):
        try:
            with lock:
                one = encode([text])
        except Exception as e:
            return None, i, f"{type(e).__name__}: {e}"
        if len(one) != 1:
            return None, i, f"the encoder returned {len(one)} token lists for one text"
        ids.append(one[0])
    return ids, None, ""


def surrogate_errors(texts: Sequence[str]) -> list[tuple[int, str]]:
    """(index, why) for each text holding a lone UTF-16 surrogate (valid JSON, not Unicode text)."""
    out = []
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            out.append((i, f"invalid UTF-16 surrogate {text[e.start]!r} at character {e.start}"))
    return out


def too_short_errors(ids: Sequence[Sequence[int]]) -> list[tuple[int, str]]:
    """(index, why) for each text with fewer than MIN_TOKENS tokens: nothing to predict, so nothing to score."""
    return [
        (i, f"nothing to predict ({len(one)} token{'' if len(one) == 1 else 's'}; a text needs at least {MIN_TOKENS})")
        for i, one in enumerate(ids)
        if len(one) < MIN_TOKENS
    ]


def refusal(problems: list[tuple[int, str]]) -> dict:
    """The 400 body for texts that cannot be scored: each named by its index, the first in ``index``."""
    named = "; ".join(f"texts[{i}]: {why}" for i, why in problems[:_MAX_NAMED])
    more = f"; and {len(problems) - _MAX_NAMED} more" if len(problems) > _MAX_NAMED else ""
    return {
        "error": f"{named}{more}. Nothing in this request was scored.",
        "index": problems[0][0],
        "indices": [i for i, _ in problems],
    }


def _json_error(e: ValueError) -> str:
    if isinstance(e, json.JSONDecodeError):  # its msg can end in " at" ("Invalid control character at")
        return f"{e.msg.removesuffix(' at')} at line {e.lineno}, column {e.colno} (char {e.pos})"
    return str(e)


class Refused(Exception):
    """A request refused before anything in it is scored: the status and the JSON body of the answer."""

    def __init__(self, status: int, payload: dict):
        super().__init__(payload["error"])
        self.status, self.payload = status, payload


class _JSONResponse(JSONResponse):
    """JSON written by json.dumps, as the service always has: ASCII only, and a score that is NaN or infinite
    goes out as such (Starlette's JSONResponse would refuse it with a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode()


def _reply(status: int, payload: dict, *, close: bool = False, headers: dict | None = None) -> Response:
    headers = dict(headers or {})
    if close:  # an unread body must not be parsed as the next request
        headers["connection"] = "close"
    return _JSONResponse(payload, status, headers=headers)


class BodyRules(BodyLimitMiddleware):
    """serve's body reader (the whole body within ``body_timeout_s`` or a 408; nothing for a client that leaves
    meanwhile), after this service's own rules, checked before any of the body is read: a POST declares its length
    in a Content-Length (411 without one; chunked too, which the release's client never sends) of at most
    ``max_body_bytes`` (413). Every refusal here closes the connection."""

    def _refuse(self, message: str, status: int) -> Response:
        return _reply(status, {"error": message}, close=True)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            names = {k for k, _ in scope["headers"]}
            lengths = [v for k, v in scope["headers"] if k == b"content-length"]
            if b"transfer-encoding" in names:
                message, status = "chunked bodies are not supported; send a Content-Length header", 411
            elif not lengths:
                message, status = "a Content-Length header is required", 411
            elif len(set(lengths)) != 1 or not lengths[0].isdigit():  # h11 refuses these first; another server may not
                got = [v.decode("latin-1") for v in lengths]
                message, status = f"Content-Length must be one non-negative integer, got {got}", 400
            elif int(lengths[0]) > self.max_body_bytes:
                message, status = f"body of {int(lengths[0])} bytes exceeds the limit of {self.max_body_bytes}", 413
            else:
                message, status = "", 0
            if status:
                return await self._refuse(message, status)(scope, receive, send)
        return await super().__call__(scope, receive, send)


def _protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol as serve runs it (a request h11 cannot parse gets a JSON 400, here ``{"error": ...}``)
    with two guards for this service:

    - a connection that has not sent a request's headers within ``header_timeout_s``, on a new connection or
      after an answer, is closed (uvicorn's keep-alive timer stops at the first byte of the next request);
    - a client that half-closes its side in the middle of a body gets an answer: the app is handed what came
      (the body then falls short of its Content-Length: a 400) instead of uvicorn dropping the connection.
    """

    class InfluenceH11Protocol(_h11_protocol()):
        _header_timer: asyncio.TimerHandle | None = None

        def error_body(self, message: str) -> dict:
            return {"error": message}

        def _await_headers(self) -> None:
            self._stop_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # a request's headers came (or the connection failed)
                self._stop_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may parse a pipelined request
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_headers()

        def eof_received(self) -> bool | None:
            cycle = self.cycle
            if cycle is not None and cycle.more_body and self.conn.their_state is h11.SEND_BODY:
                cycle.more_body = False  # the body ends here, short of its Content-Length
                cycle.message_event.set()
                return True  # keep the connection open to write the answer
            return None  # closed, as uvicorn does: a request waiting for its scores sees its client leave

    return InfluenceH11Protocol


def build_app(
    scoring: ScoringQueue,
    encode: Callable[[list[str]], list[list[int]]],
    *,
    max_texts: int,
    max_body_bytes: int,
    timeout_s: float,
    body_timeout_s: float,
    retry_after_s: int,
):
    """The service as an ASGI app (Starlette inside :class:`BodyRules`), for uvicorn with :func:`_protocol`."""
    encode_lock = threading.Lock()  # tokenizers are not all safe to call from several threads at once
    busy = {"Retry-After": str(retry_after_s)}

    def prepare(raw: bytes) -> list[list[int]]:
        """The request's token lists, or :class:`Refused`. Blocking: runs in a worker thread."""
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise Refused(400, {"error": f"invalid JSON: {_json_error(e)}"}) from None
        except RecursionError:
            raise Refused(400, {"error": "invalid JSON: nested too deeply"}) from None
        texts = payload.get("texts") if isinstance(payload, dict) else None
        if not isinstance(texts, list):
            raise Refused(400, {"error": "expected a JSON object with a list field 'texts'"})
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise Refused(
                400,
                {
                    "error": f"every entry of 'texts' must be a string; texts[{bad}] is {type(texts[bad]).__name__}",
                    "index": bad,
                },
            )
        if len(texts) > max_texts:
            raise Refused(413, {"error": f"{len(texts)} texts exceed the limit of {max_texts} per request"})
        if not texts:
            return []
        problems = surrogate_errors(texts)
        if problems:
            raise Refused(400, refusal(problems))
        ids, bad, why = _encode_all(encode, encode_lock, texts)
        if ids is None:
            raise Refused(400, {"error": f"texts[{bad}] could not be encoded: {why}", "index": bad})
        problems = too_short_errors(ids)
        if problems:
            raise Refused(400, refusal(problems))
        return ids

    async def scores(job: Job, request: Request) -> Response:
        """The job's scores, unless its deadline passes or its client leaves first (after the body, the only message
        left to receive is http.disconnect); then the job is cancelled."""
        scored = asyncio.wrap_future(job.future)
        left = asyncio.ensure_future(request.receive())
        try:
            wait_s = max(job.deadline - time.monotonic(), 0.0)
            await asyncio.wait((scored, left), timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            if job.future.cancelled():  # expired while queued, or the queue closed
                return _reply(503, {"error": f"scoring did not start within {timeout_s}s"}, headers=busy)
            if job.future.done():
                if (e := job.future.exception()) is not None:
                    return _reply(500, {"error": f"scoring failed: {type(e).__name__}: {e}"})
                result = job.future.result()
                return _reply(
                    200,
                    {
                        "influence_scores": result["influence"],
                        "loss_before": result["loss_before"],
                        "loss_after": result["loss_after"],
                    },
                )
            if left.done():
                client = "%s:%d" % request.client if request.client else "a client"
                log.info("%s left before its %d texts were scored; cancelled", client, len(job.docs))
                return _reply(503, {"error": "the client left"})  # never sent: there is nobody to send it to
            return _reply(503, {"error": f"scoring took longer than {timeout_s}s"}, headers=busy)
        finally:  # not answered (client gone, deadline passed, or this handler cancelled at shutdown): cancel it
            if not job.future.done():
                scoring.abandon(job)
            left.cancel()
            scored.cancel()  # after abandon: the job is out of the queue, so this cancels nothing more

    async def get_influence(request: Request) -> Response:
        raw = await request.body()
        declared = int(request.headers["content-length"])  # BodyRules lets no POST through without one
        if len(raw) < declared:  # the client closed its side mid-body (see _protocol)
            return _reply(400, {"error": f"body ended after {len(raw)} of {declared} bytes"}, close=True)
        try:
            ids = await asyncio.to_thread(prepare, raw)
        except Refused as e:
            return _reply(e.status, e.payload)
        if not ids:
            return _reply(200, {"influence_scores": [], "loss_before": [], "loss_after": []})
        try:
            job = scoring.submit(ids, timeout_s)
        except (QueueFull, RuntimeError) as e:  # full, or shutting down
            return _reply(
                503, {"error": f"the influence service is busy: {e}; retry after {retry_after_s}s"}, headers=busy
            )
        return await scores(job, request)

    async def health(request: Request) -> Response:
        return _reply(200, {"status": "ok"})

    async def no_route(request: Request, exc: HTTPException) -> Response:
        """Starlette's own refusals (no such route: 404; a method the route lacks: 405) in this service's shape."""
        message = {
            404: f"no route {request.method} {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }
        return _reply(
            exc.status_code, {"error": f"{message.get(exc.status_code, exc.detail)}; {_ROUTES}"}, headers=exc.headers
        )

    async def server_fault(request: Request, exc: Exception) -> Response:
        """Any other exception: a JSON 500 (Starlette then re-raises it, so uvicorn logs the traceback)."""
        return _reply(500, {"error": f"internal server error: {type(exc).__name__}"})

    app = Starlette(
        routes=[Route("/get_influence", get_influence, methods=["POST"]), Route("/health", health, methods=["GET"])],
        exception_handlers={HTTPException: no_route, Exception: server_fault},
    )
    return BodyRules(app, max_body_bytes, body_timeout_s)


class InfluenceServer:
    """The service around a probe, bound at construction (``address``: port 0 picks a free one). ``start()``
    serves in a background thread until ``close()``; ``serve_forever()`` blocks (CLI) until interrupted.

    ``encode`` maps a list of texts to a list of token-id lists. ``timeout_s`` bounds a request's wait for its
    scores, ``socket_timeout_s`` the wait for a request's headers and for its whole body, ``max_queued`` the
    requests waiting for the device.
    """

    def __init__(
        self,
        probe: Any,
        encode: Callable[[list[str]], list[list[int]]],
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        batch_size: int = 32,
        max_texts: int = 256,
        max_body_bytes: int = 16 << 20,
        timeout_s: float = 600.0,
        pad_id: int = 0,
        max_queued: int = 64,
        socket_timeout_s: float = 30.0,
        retry_after_s: int = 5,
        min_bucket: int = 16,
    ):
        for name, value in (
            ("max_texts", max_texts),
            ("max_body_bytes", max_body_bytes),
            ("timeout_s", timeout_s),
            ("socket_timeout_s", socket_timeout_s),
            ("retry_after_s", retry_after_s),
        ):
            if not value > 0 or (isinstance(value, float) and math.isinf(value)):
                raise ValueError(f"InfluenceServer: {name}={value} must be a finite number > 0")
        self.scoring = ScoringQueue(probe, batch_size, pad_id, max_queued, min_bucket)
        try:
            self.app = build_app(
                self.scoring,
                encode,
                max_texts=max_texts,
                max_body_bytes=max_body_bytes,
                timeout_s=timeout_s,
                body_timeout_s=socket_timeout_s,
                retry_after_s=int(math.ceil(retry_after_s)),
            )
            # Bound here, not by uvicorn, so that the address is known (and a taken port fails) before serving.
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._socket = socket.create_server((host, port), family=family, backlog=_BACKLOG)
        except BaseException:
            self.scoring.close()
            raise
        options = {
            **uvicorn_options(),
            "http": _protocol(socket_timeout_s),
            "timeout_keep_alive": socket_timeout_s,
            "backlog": _BACKLOG,
        }
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host=host, port=self.address[1], lifespan="off", **options)
        )
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._socket.getsockname()[:2]

    def start(self) -> InfluenceServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="influence-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the influence service's uvicorn server did not start")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self.close()

    def close(self) -> None:
        """Stop serving (requests in flight get uvicorn's graceful-shutdown time), then the device thread."""
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
            self._thread = None
        self._socket.close()
        self.scoring.close()
