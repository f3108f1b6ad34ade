"""Requests from many threads served in batches by one device thread: the skeleton of every in-process service.

The influence service's scoring queue and ``synpro serve``'s generation queue differ only in how they pick the
next batch and what they run on it. This base class holds the rest: a bounded queue (a full one raises
:class:`QueueFull` instead of blocking a handler), the device thread, a failure answering every request of the
failed batch instead of hanging it, and shutdown cancelling what still waits.
"""

from __future__ import annotations

import abc
import collections
import logging
import threading
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")  # anything with a ``future`` (concurrent.futures.Future)


class QueueFull(Exception):
    """``max_queued`` requests are already waiting."""


class DeviceQueue(abc.ABC, Generic[Item]):
    """Subclasses implement :meth:`_take` (wait with :meth:`_wait_for_items`, then pick a batch under
    ``self._cv``) and :meth:`_run` (compute and set each taken item's future), and call :meth:`_start` last in
    their ``__init__``. A scheduler whose work outlives one :meth:`_run` (continuous batching) also overrides
    :meth:`_busy`, :meth:`_failed` and :meth:`_stopped`."""

    what = "request"  # for messages

    def __init__(self, *, max_queued: int, thread_name: str):
        if max_queued < 1:
            raise ValueError(f"{type(self).__name__}: max_queued={max_queued} must be >= 1")
        self.max_queued = max_queued
        self.stats: collections.Counter = collections.Counter()
        self._queue: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)

    def _start(self) -> None:
        self._thread.start()

    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    def _enqueue(self, item: Item) -> None:
        """Queue ``item``; raises :class:`QueueFull` rather than waiting, RuntimeError once closed."""
        with self._cv:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} is shutting down")
            if len(self._queue) >= self.max_queued:
                self.stats["requests_rejected"] += 1
                raise QueueFull(f"{len(self._queue)} {self.what}s are waiting (max_queued={self.max_queued})")
            self._queue.append(item)
            self._cv.notify()

    def _wait_for_items(self) -> bool:
        """Block until something is queued (True) or the queue is closed (False). Call with ``self._cv`` held."""
        while not self._queue and not self._closed:
            self._cv.wait()
        return not self._closed

    @abc.abstractmethod
    def _take(self) -> list[Item] | None:
        """The next batch (possibly empty), or None once closed."""

    @abc.abstractmethod
    def _run(self, items: list[Item]) -> None:
        """Compute the batch and set each item's future."""

    def _busy(self) -> bool:
        """Whether work taken earlier is still in progress (then :meth:`_run` runs even with nothing new)."""
        return False

    def _failed(self, items: list[Item], error: Exception) -> None:
        """Answer the requests a failed :meth:`_run` leaves unanswered (by default: the ones it took)."""
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def _stopped(self) -> None:
        """The thread is ending: answer whatever work is still in progress (nothing by default)."""

    def _loop(self) -> None:
        try:
            while (items := self._take()) is not None:
                if not items and not self._busy():
                    continue
                try:
                    self._run(items)
                except Exception as e:  # answer every taken request instead of hanging it
                    log.exception("%s failed", type(self).__name__)
                    self._failed(items, e)
        finally:  # the thread is ending (closed, or an error outside _run): refuse new work, cancel what waits
            with self._cv:
                if not self._closed:
                    log.error("%s: the device thread stopped; the queue is closed", type(self).__name__)
                self._closed = True
                for item in self._queue:
                    item.future.cancel()
                self._queue.clear()
            self._stopped()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for item in self._queue:
                item.future.cancel()
            self._queue.clear()
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


__all__ = ["DeviceQueue", "QueueFull"]
