"""HTTP influence service with the SynPro release's contract, so external trainers can call it.

    POST /get_influence  {"texts": [...]}  ->  {"influence_scores": [...], "loss_before": [...], "loss_after": [...]}
    GET  /health                          ->  {"status": "ok"}

Binds 127.0.0.1 by default. Requests from concurrent clients go into one queue; a single device thread takes
up to ``batch_size`` texts at a time (from one or several requests), scores them in one fixed-shape call, and
hands each request its own slice. Bad JSON, missing or non-string texts, too many texts or too large a body get
a 4xx with a JSON ``{"error": ...}``.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence

import numpy as np

from synpro_jax.influence.probe import Probe

log = logging.getLogger(__name__)


class ScoringQueue:
    """Batches texts from any number of requests onto the device, one fixed-shape call at a time."""

    def __init__(self, probe: Probe, encode: Callable[[list[str]], list[list[int]]], batch_size: int,
                 pad_id: int = 0):
        self.probe, self.encode, self.batch_size, self.pad_id = probe, encode, batch_size, pad_id
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="influence-device", daemon=True)
        self._thread.start()

    def submit(self, texts: Sequence[str]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((list(texts), future))
        return future

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            pending = [item]
            count = len(item[0])
            while count < self.batch_size:  # gather more requests that are already waiting
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                pending.append(nxt)
                count += len(nxt[0])
            try:
                texts = [t for req, _ in pending for t in req]
                docs = [np.asarray(ids, np.int32) for ids in self.encode(texts)] if texts else []
                scores = self.probe.score_docs(docs, self.batch_size, self.pad_id)
                start = 0
                for req, fut in pending:
                    end = start + len(req)
                    fut.set_result({k: v[start:end].tolist() for k, v in scores.items()})
                    start = end
            except Exception as e:  # a failure answers every waiting request instead of hanging them
                log.exception("influence scoring failed")
                for _, fut in pending:
                    if not fut.done():
                        fut.set_exception(e)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


def make_handler(scoring: ScoringQueue, max_texts: int, max_body_bytes: int, timeout_s: float):
    class Handler(BaseHTTPRequestHandler):
        server_version = "synpro-influence/1"

        def log_message(self, fmt, *args):  # route to logging, not stderr
            log.info("%s %s", self.address_string(), fmt % args)

        def _reply(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                return self._reply(200, {"status": "ok"})
            return self._reply(404, {"error": f"no route GET {self.path}; use GET /health or POST /get_influence"})

        def do_POST(self):
            if self.path != "/get_influence":
                return self._reply(404, {"error": f"no route POST {self.path}; use POST /get_influence"})
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._reply(411, {"error": "Content-Length is required"})
            if length > max_body_bytes:
                return self._reply(413, {"error": f"body of {length} bytes exceeds the limit of {max_body_bytes}"})
            raw = self.rfile.read(length)
            try:
                payload = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return self._reply(400, {"error": f"invalid JSON: {e}"})
            texts = payload.get("texts") if isinstance(payload, dict) else None
            if not isinstance(texts, list):
                return self._reply(400, {"error": "expected a JSON object with a list field 'texts'"})
            if not all(isinstance(t, str) for t in texts):
                return self._reply(400, {"error": "every entry of 'texts' must be a string"})
            if len(texts) > max_texts:
                return self._reply(413, {"error": f"{len(texts)} texts exceed the limit of {max_texts} per request"})
            try:
                result = scoring.submit(texts).result(timeout=timeout_s)
            except concurrent.futures.TimeoutError:
                return self._reply(503, {"error": f"scoring took longer than {timeout_s}s"})
            except Exception as e:
                return self._reply(500, {"error": f"scoring failed: {e}"})
            return self._reply(200, {"influence_scores": result["influence"], "loss_before": result["loss_before"],
                                     "loss_after": result["loss_after"]})

    return Handler


class InfluenceServer:
    """The service around a :class:`Probe`. ``start()`` serves in a background thread; ``serve_forever()``
    blocks (for the CLI)."""

    def __init__(self, probe: Probe, encode: Callable[[list[str]], list[list[int]]], *, host: str = "127.0.0.1",
                 port: int = 8000, batch_size: int = 32, max_texts: int = 256, max_body_bytes: int = 16 << 20,
                 timeout_s: float = 600.0, pad_id: int = 0):
        self.scoring = ScoringQueue(probe, encode, batch_size, pad_id)
        self.httpd = ThreadingHTTPServer((host, port), make_handler(self.scoring, max_texts, max_body_bytes,
                                                                   timeout_s))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def start(self) -> "InfluenceServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="influence-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        self.httpd.shutdown() if self._thread else None
        self.httpd.server_close()
        self.scoring.close()
