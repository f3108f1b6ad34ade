"""Concurrent generation requests batched onto the device by one thread.

Each HTTP request becomes a :class:`GenRequest` (token-id prompts, one row per prompt and choice, and its
sampling knobs). Two schedulers serve them:

- :class:`ContinuousQueue` (the default): continuous batching. Arriving requests join the running decode as
  soon as slots are free (:class:`synpro_jax.generation.continuous.ContinuousBatcher`); a request is answered when
  its last row ends, whatever the others still decode. Rows keep their own knobs, so requests with different
  temperatures share the slots.
- :class:`GenerationQueue` (``ServeConfig.batching="static"``): takes every waiting request whose knobs
  (temperature, top-k, top-p, seed) match the oldest one's, up to ``max_rows`` rows, and runs them as one
  ``Sampler.generate`` call that ends with its longest row.

Either way each row keeps the PRNG stream it would have had alone (``stream_ids``: its choice index within its
request), so a request's completions do not depend on what it was batched with.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
import concurrent.futures
import dataclasses
import itertools
import logging
import math
import time
from typing import Any

import numpy as np

from synpro_jax.device_queue import DeviceQueue, QueueFull

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Knobs:
    """Sampling settings shared by every row of one device call."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0


@dataclasses.dataclass(eq=False)
class GenRequest:
    prompts: list[list[int]]  # one entry per output row (a prompt repeated n times for n choices)
    budgets: list[int]  # max_tokens per row
    stream_ids: list[int]  # PRNG stream per row
    knobs: Knobs
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)


@dataclasses.dataclass(frozen=True)
class RowResult:
    tokens: list[int]  # generated ids, a final stop id excluded
    finished: bool  # ended on a stop id (False: hit max_tokens)
    generated: int  # tokens the device produced, a final stop id included (the usage count)


class GenerationQueue(DeviceQueue[GenRequest]):
    """A queue of :class:`GenRequest` and the device thread that serves it through ``sampler``.

    ``sampler`` needs ``generate(prompts, max_new_tokens=, temperature=, top_k=, top_p=, seed=, eos_id=, pad_id=,
    stream_ids=)`` returning tokens/lengths/finished (synpro_jax.generation.sampler.Sampler). ``batch_wait_s``
    lets a few concurrent requests arrive before a call starts; ``batches`` records each call's (requests, rows).
    """

    def __init__(
        self,
        sampler: Any,
        *,
        stop_ids: Sequence[int],
        pad_id: int = 0,
        max_rows: int = 32,
        max_queued: int = 256,
        batch_wait_s: float = 0.005,
    ):
        if max_rows < 1 or batch_wait_s < 0:
            raise ValueError(f"GenerationQueue: max_rows={max_rows} must be >= 1, batch_wait_s={batch_wait_s} >= 0")
        super().__init__(max_queued=max_queued, thread_name="serve-device")
        self.sampler, self.stop_ids, self.pad_id = sampler, sorted(set(int(i) for i in stop_ids)), int(pad_id)
        self.max_rows, self.batch_wait_s = max_rows, batch_wait_s
        self.batches: collections.deque[tuple[int, int]] = collections.deque(maxlen=10_000)  # the latest calls
        self._start()

    def submit(self, request: GenRequest) -> concurrent.futures.Future:
        _check_knobs(request, self.max_rows)
        self._enqueue(request)
        return request.future

    def _take(self) -> list[GenRequest] | None:
        with self._cv:
            if not self._wait_for_items():
                return None
        if self.batch_wait_s:
            time.sleep(self.batch_wait_s)  # let requests sent together arrive together
        with self._cv:
            if not self._queue:  # closed meanwhile
                return None if self._closed else []
            first = self._queue[0]
            taken, rows, keep = [], 0, collections.deque()
            while self._queue:
                req = self._queue.popleft()
                if req.knobs == first.knobs and rows + len(req.prompts) <= self.max_rows:
                    if req.future.set_running_or_notify_cancel():
                        taken.append(req)
                        rows += len(req.prompts)
                else:
                    keep.append(req)
            self._queue.extendleft(reversed(keep))
            return taken

    def _run(self, requests: list[GenRequest]) -> None:
        prompts = [p for r in requests for p in r.prompts]
        budgets = [b for r in requests for b in r.budgets]
        streams = [s for r in requests for s in r.stream_ids]
        k = requests[0].knobs
        out = self.sampler.generate(
            prompts,
            max_new_tokens=budgets,
            temperature=k.temperature,
            top_k=k.top_k,
            top_p=k.top_p,
            seed=k.seed,
            eos_id=self.stop_ids or None,
            pad_id=self.pad_id,
            stream_ids=streams,
        )
        self.batches.append((len(requests), len(prompts)))
        self.stats["device_calls"] += 1
        self.stats["rows"] += len(prompts)
        stop = set(self.stop_ids)
        results = []
        for row, n, fin in zip(np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.finished)):
            ids = [int(t) for t in row[: int(n)]]
            generated = len(ids)
            if fin and ids and ids[-1] in stop:
                ids = ids[:-1]
            results.append(RowResult(ids, bool(fin), generated))
        at = 0
        for r in requests:
            r.future.set_result(results[at : at + len(r.prompts)])
            at += len(r.prompts)


def _check_knobs(request: GenRequest, max_rows: int) -> None:
    k = request.knobs
    if not (math.isfinite(k.temperature) and k.temperature >= 0) or (
        k.top_p is not None and not (math.isfinite(k.top_p) and 0 < k.top_p <= 1)
    ):
        # a request's bad knobs must fail it alone, never the device call it would share with others
        raise ValueError(f"temperature={k.temperature} must be finite and >= 0, top_p={k.top_p} in (0, 1]")
    if len(request.prompts) > max_rows:
        raise ValueError(
            f"{len(request.prompts)} rows (prompts x n) exceed the server's max_rows="
            f"{max_rows}; send fewer prompts or choices per request"
        )


@dataclasses.dataclass(eq=False)
class _InFlight:
    request: GenRequest
    rows: list  # RowResult per row, None until it ends
    left: int


class ContinuousQueue(DeviceQueue[GenRequest]):
    """A queue of :class:`GenRequest` served by continuous batching on one device thread.

    ``make_batcher()`` builds the :class:`~synpro_jax.generation.continuous.ContinuousBatcher` (and again after a
    failed step, whose donated state is gone). The thread moves arriving requests into the batcher's slots as they
    free up, runs one decode chunk at a time, and answers each request when its last row ends. A failed chunk
    answers every request in flight with the error, and the queue goes on. ``batches`` records, per chunk that
    admitted requests, (requests, rows) admitted together. ``make_batcher`` is called on the device thread's
    side only after a failure; the first batcher is built here.
    """

    def __init__(
        self,
        make_batcher: Callable[[], Any],
        *,
        max_rows: int = 32,
        max_queued: int = 256,
        batch_wait_s: float = 0.005,
    ):
        if max_rows < 1 or batch_wait_s < 0:
            raise ValueError(f"ContinuousQueue: max_rows={max_rows} must be >= 1, batch_wait_s={batch_wait_s} >= 0")
        super().__init__(max_queued=max_queued, thread_name="serve-device")
        self.make_batcher, self.max_rows, self.batch_wait_s = make_batcher, max_rows, batch_wait_s
        self.batcher = make_batcher()
        self.batches: collections.deque[tuple[int, int]] = collections.deque(maxlen=10_000)
        self._ids = itertools.count()
        self._inflight: dict[int, _InFlight] = {}
        self._start()

    def submit(self, request: GenRequest) -> concurrent.futures.Future:
        _check_knobs(request, self.max_rows)
        for prompt, budget in zip(request.prompts, request.budgets):  # a request the slots cannot take fails alone
            self.batcher.check(self._row(request, prompt, budget, 0))
        self._enqueue(request)
        return request.future

    @staticmethod
    def _row(request: GenRequest, prompt, budget, stream):
        from synpro_jax.generation.continuous import Request

        k = request.knobs
        return Request(prompt, int(budget), int(stream), k.temperature, k.top_k, k.top_p, k.seed)

    def _busy(self) -> bool:
        return self.batcher.busy()

    def _take(self) -> list[GenRequest] | None:
        """Every request that arrived since the last chunk; blocks only while nothing is decoding."""
        with self._cv:
            if not self.batcher.busy():
                if not self._wait_for_items():
                    return None
                wait = self.batch_wait_s
            else:
                wait = 0.0
        if wait:
            time.sleep(wait)  # let requests sent together arrive together
        with self._cv:
            if self._closed:
                return None
            taken = [req for req in self._queue if req.future.set_running_or_notify_cancel()]
            self._queue.clear()
            return taken

    def _run(self, requests: list[GenRequest]) -> None:
        """Admit ``requests`` into the batcher, decode one chunk, answer the requests whose rows all ended."""
        rows = 0
        for req in requests:
            rid = next(self._ids)
            self._inflight[rid] = _InFlight(req, [None] * len(req.prompts), len(req.prompts))
            for j, (prompt, budget, stream) in enumerate(zip(req.prompts, req.budgets, req.stream_ids)):
                self.batcher.add((rid, j), self._row(req, prompt, budget, stream))
            rows += len(req.prompts)
        if rows:
            self.batches.append((len(requests), rows))
            self.stats["rows"] += rows
        ended = self.batcher.step()
        self.stats["device_calls"] += 1
        for (rid, j), (completion,) in ended:
            entry = self._inflight[rid]
            ids = completion.tokens
            generated = len(ids)
            if completion.finished and ids and ids[-1] in self.batcher.eos_ids:
                ids = ids[:-1]
            entry.rows[j] = RowResult(ids, completion.finished, generated)
            entry.left -= 1
            if entry.left == 0:
                del self._inflight[rid]
                entry.request.future.set_result(entry.rows)

    def _failed(self, items: list[GenRequest], error: Exception) -> None:
        """A failed chunk answers every request in flight; the batcher (its state was donated) starts afresh."""
        for entry in self._inflight.values():
            if not entry.request.future.done():
                entry.request.future.set_exception(error)
        self._inflight.clear()
        super()._failed(items, error)
        self.batcher = self.make_batcher()

    def _stopped(self) -> None:
        for entry in self._inflight.values():
            if not entry.request.future.done():
                entry.request.future.set_exception(RuntimeError("the server is shutting down"))
        self._inflight.clear()


__all__ = ["ContinuousQueue", "GenerationQueue", "GenRequest", "Knobs", "QueueFull", "RowResult"]
