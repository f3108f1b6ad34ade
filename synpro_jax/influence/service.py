"""HTTP influence service with the SynPro release's contract, so external trainers can call it.

    POST /get_influence  {"texts": [...]}  ->  {"influence_scores": [...], "loss_before": [...], "loss_after": [...]}
    GET  /health                          ->  {"status": "ok"}

Binds 127.0.0.1:24775 by default (the port the release's client calls). Each request is read, validated and
tokenized in its own connection thread, so a text that fails to encode fails only its request (400 naming the
index). A request holding a text that cannot be scored is refused whole, before anything is scored, with a 400
naming each such text's index and why: a lone UTF-16 surrogate (JSON ``"\\ud800"``: not Unicode text, so no
tokenizer can encode it), or fewer than 2 tokens after tokenization (``""``, ``"a"``: a text of T tokens has T - 1
next-token predictions, so there is no loss to compare and no influence to report).

The token lists then wait in a bounded queue (full: 503 with Retry-After). One device thread takes up to
``batch_size`` texts at a time from one or several requests, sorts them by length and scores them in
``[batch_size, bucket + 1]`` blocks, where ``bucket`` is a power of two (at least ``min_bucket``, at most the
probe's ``max_len``): short texts are not padded to ``max_len`` and there are only a few shapes to compile.

Sockets have timeouts, the body must come with a sane Content-Length, and a request whose client disconnected or
whose wait passed ``timeout_s`` is cancelled: its texts are dropped from the queue, or skipped in later blocks if
scoring had started.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import concurrent.futures
import dataclasses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import logging
import math
import re
import select
import socket
import threading
import time
from typing import Any

import numpy as np

from synpro_jax.device_queue import DeviceQueue, QueueFull

log = logging.getLogger(__name__)

DEFAULT_PORT = 24775  # generator/data_influence_reward.py in the release calls 127.0.0.1:24775
_DIGITS = re.compile(r"[0-9]{1,18}")
_SCORE_KEYS = ("influence", "loss_before", "loss_after")
MIN_TOKENS = 2  # a text of T tokens is scored on its T - 1 next-token predictions
_MAX_NAMED = 10  # texts named in one refusal's message (all are in its "indices")


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


def make_handler(
    scoring: ScoringQueue,
    encode: Callable[[list[str]], list[list[int]]],
    *,
    max_texts: int,
    max_body_bytes: int,
    timeout_s: float,
    socket_timeout_s: float,
    retry_after_s: int,
    poll_s: float = 0.05,
):
    encode_lock = threading.Lock()  # tokenizers are not all safe to call from several threads at once

    class Handler(BaseHTTPRequestHandler):
        server_version = "synpro-influence/1"
        timeout = socket_timeout_s  # applied to the connection socket: every recv and send is bounded

        def log_message(self, fmt, *args):  # route to logging, not stderr
            log.info("%s %s", self.address_string(), fmt % args)

        def _reply(self, code: int, payload: dict, close: bool = False, headers: dict | None = None) -> None:
            body = json.dumps(payload).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if close:  # an unread body must not be parsed as the next request
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)
            except OSError as e:  # the client left; nothing to answer
                log.info("could not answer %s: %s", self.address_string(), e)
                self.close_connection = True

        def _client_gone(self) -> bool:
            """True once the peer closed or reset the connection (HTTP/1.0: it sends nothing after its request)."""
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except (OSError, ValueError):
                return True

        def do_GET(self):
            if self.path == "/health":
                return self._reply(200, {"status": "ok"})
            return self._reply(404, {"error": f"no route GET {self.path}; use GET /health or POST /get_influence"})

        def _read_body(self) -> bytes | None:
            if self.headers.get("Transfer-Encoding"):
                self._reply(411, {"error": "chunked bodies are not supported; send a Content-Length header"}, True)
                return None
            values = self.headers.get_all("Content-Length") or []
            if not values:
                self._reply(411, {"error": "a Content-Length header is required"}, True)
                return None
            if len(set(v.strip() for v in values)) != 1 or not _DIGITS.fullmatch(values[0].strip()):
                self._reply(400, {"error": f"Content-Length must be one non-negative integer, got {values}"}, True)
                return None
            length = int(values[0])
            if length > max_body_bytes:
                self._reply(413, {"error": f"body of {length} bytes exceeds the limit of {max_body_bytes}"}, True)
                return None
            chunks, got, deadline = [], 0, time.monotonic() + socket_timeout_s
            try:
                while got < length:  # each recv is bounded by the socket timeout, the whole body by the deadline
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    chunk = self.rfile.read1(min(length - got, 1 << 16))
                    if not chunk:
                        self._reply(400, {"error": f"body ended after {got} of {length} bytes"}, True)
                        return None
                    chunks.append(chunk)
                    got += len(chunk)
            except TimeoutError:
                self._reply(408, {"error": f"body not received within {socket_timeout_s}s"}, True)
                return None
            return b"".join(chunks)

        def do_POST(self):
            if self.path != "/get_influence":
                return self._reply(404, {"error": f"no route POST {self.path}; use POST /get_influence"}, True)
            raw = self._read_body()
            if raw is None:
                return
            try:
                payload = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return self._reply(400, {"error": f"invalid JSON: {_json_error(e)}"})
            texts = payload.get("texts") if isinstance(payload, dict) else None
            if not isinstance(texts, list):
                return self._reply(400, {"error": "expected a JSON object with a list field 'texts'"})
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if bad is not None:
                return self._reply(
                    400,
                    {
                        "error": f"every entry of 'texts' must be a string; texts[{bad}] is "
                        f"{type(texts[bad]).__name__}",
                        "index": bad,
                    },
                )
            if len(texts) > max_texts:
                return self._reply(413, {"error": f"{len(texts)} texts exceed the limit of {max_texts} per request"})
            if not texts:
                return self._reply(200, {"influence_scores": [], "loss_before": [], "loss_after": []})
            problems = surrogate_errors(texts)
            if problems:
                return self._reply(400, refusal(problems))
            ids, bad, why = _encode_all(encode, encode_lock, texts)
            if ids is None:
                return self._reply(400, {"error": f"texts[{bad}] could not be encoded: {why}", "index": bad})
            problems = too_short_errors(ids)
            if problems:
                return self._reply(400, refusal(problems))
            busy = {"Retry-After": str(retry_after_s)}
            try:
                job = scoring.submit(ids, timeout_s)
            except QueueFull as e:
                return self._reply(
                    503, {"error": f"the influence service is busy: {e}; retry after {retry_after_s}s"}, headers=busy
                )
            while True:
                try:
                    result = job.future.result(timeout=poll_s)
                    break
                except concurrent.futures.TimeoutError:
                    pass
                except concurrent.futures.CancelledError:
                    return self._reply(503, {"error": f"scoring did not start within {timeout_s}s"}, headers=busy)
                except Exception as e:
                    return self._reply(500, {"error": f"scoring failed: {type(e).__name__}: {e}"})
                if self._client_gone():
                    scoring.abandon(job)
                    log.info("%s left before its %d texts were scored; cancelled", self.address_string(), len(texts))
                    self.close_connection = True
                    return
                if time.monotonic() > job.deadline:
                    scoring.abandon(job)
                    return self._reply(503, {"error": f"scoring took longer than {timeout_s}s"}, headers=busy)
            return self._reply(
                200,
                {
                    "influence_scores": result["influence"],
                    "loss_before": result["loss_before"],
                    "loss_after": result["loss_after"],
                },
            )

    return Handler


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: bursts of clients wait in the kernel, not refused


class InfluenceServer:
    """The service around a probe. ``start()`` serves in a background thread; ``serve_forever()`` blocks (CLI).

    ``encode`` maps a list of texts to a list of token-id lists. ``timeout_s`` bounds a request's wait for its
    scores, ``socket_timeout_s`` every socket read and write (and the whole body upload), ``max_queued`` the
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
        handler = make_handler(
            self.scoring,
            encode,
            max_texts=max_texts,
            max_body_bytes=max_body_bytes,
            timeout_s=timeout_s,
            socket_timeout_s=socket_timeout_s,
            retry_after_s=int(math.ceil(retry_after_s)),
        )
        try:
            self.httpd = _HTTPServer((host, port), handler)
        except BaseException:
            self.scoring.close()
            raise
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def start(self) -> InfluenceServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="influence-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()
        self.scoring.close()
