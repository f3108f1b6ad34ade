"""A client for any OpenAI-compatible endpoint (vLLM, ``synpro serve``, ...), on httpx.

Each call is retried with exponential backoff (``backoff_s * 2**attempt``, capped, with jitter) on timeouts,
dropped connections, 408/429/5xx and malformed bodies, and goes through a circuit breaker: after
``breaker_failures`` consecutive failed calls (each after its retries) the client fails fast for
``breaker_cooldown_s``, then lets one trial call through; its success closes the breaker again.

Time is bounded twice, by wall clock rather than per socket read (a server that trickles its reply a byte at a
time resets a read timeout forever): ``timeout_s`` bounds one attempt as a whole (connect, send, the status line,
headers and the whole body), and ``deadline_s`` the whole call (every attempt and every backoff sleep between
them). An attempt runs in its own thread, so the caller gets its answer at the deadline even while a server is
still dribbling headers; the attempt's thread stops at its next chunk. A call past its deadline raises
:class:`DeadlineExceeded`, naming the URL and the deadline, and is not retried.
"""

from __future__ import annotations

from collections.abc import Sequence
import concurrent.futures
import dataclasses
import json
import logging
import math
import random
import threading
import time
from typing import Any

import httpx

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class RemoteError(RuntimeError):
    """A call failed: after its retries, on a non-retryable status, or with the breaker open."""


class CircuitOpenError(RemoteError):
    """The circuit breaker is open: the endpoint failed too often just now."""


class MalformedReply(RemoteError):
    """The endpoint answered 200 with a body that is not an OpenAI reply."""


class DeadlineExceeded(RemoteError):
    """The call's deadline passed (during an attempt or before the next retry could start)."""


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # None: the first model GET /models lists
    api_key: str = "EMPTY"
    timeout_s: float = 60.0  # one attempt, whole: connect, send and the complete reply
    connect_timeout_s: float = 5.0
    max_retries: int = 3  # attempts after the first
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    deadline_s: float | None = None  # one call, whole (all attempts and sleeps); None: call_deadline_s's bound

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={self.base_url!r}: an http(s) URL such as http://127.0.0.1:8000/v1")
        for name in ("timeout_s", "connect_timeout_s"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"ClientConfig.{name}={getattr(self, name)} must be a finite number > 0")
        if self.deadline_s is not None and not (self.deadline_s > 0 and math.isfinite(self.deadline_s)):
            raise ValueError(f"ClientConfig.deadline_s={self.deadline_s} must be a finite number > 0 (or None)")
        for name in ("backoff_s", "max_backoff_s", "breaker_cooldown_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ClientConfig.{name}={getattr(self, name)} must be >= 0")
        if self.max_retries < 0 or self.breaker_failures < 1:
            raise ValueError(
                f"ClientConfig.max_retries={self.max_retries} must be >= 0 and breaker_failures="
                f"{self.breaker_failures} >= 1"
            )

    def backoff_cap(self, attempt: int) -> float:
        """The longest sleep before attempt ``attempt`` (1 = the first retry); jitter takes 50-100% of it."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)

    @property
    def call_deadline_s(self) -> float:
        """Seconds one call may take in all: ``deadline_s``, or else every attempt's ``timeout_s`` plus the longest
        backoff sleeps between them (what the retries could take at worst)."""
        if self.deadline_s is not None:
            return float(self.deadline_s)
        return (self.max_retries + 1) * self.timeout_s + sum(
            self.backoff_cap(a) for a in range(1, self.max_retries + 1)
        )


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open after ``cooldown_s`` (one trial)."""

    def __init__(self, failures: int, cooldown_s: float, clock=time.monotonic):
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self.opened_at is None:
                return "closed"
            return "half-open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def before_call(self) -> None:
        with self._lock:
            if self.opened_at is None:
                return
            left = self.cooldown_s - (self.clock() - self.opened_at)
            if left > 0 or self._trial:
                raise CircuitOpenError(
                    f"circuit open after {self.consecutive} consecutive failures; "
                    f"failing fast for {max(left, 0):.1f}s more"
                )
            self._trial = True  # half-open: this call is the trial

    def record(self, ok: bool) -> None:
        with self._lock:
            self._trial = False
            if ok:
                self.consecutive, self.opened_at = 0, None
                return
            self.consecutive += 1
            if self.consecutive >= self.failures or self.opened_at is not None:
                self.opened_at = self.clock()


class OpenAIClient:
    """``completions(prompts, **knobs) -> [text]`` and ``chat(messages, **knobs) -> text``; thread-safe.

    Both take ``deadline_at`` (a ``time.monotonic()`` instant): the call ends by then or by its own
    ``call_deadline_s``, whichever comes first, so several calls can share one deadline.
    """

    def __init__(self, config: ClientConfig, transport: httpx.BaseTransport | None = None):
        self.config = config
        timeout = httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        self._http = httpx.Client(
            base_url=config.base_url.rstrip("/") + "/",
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {config.api_key}"},
        )
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
        self.stats: dict[str, int] = {
            "calls": 0,
            "attempts": 0,
            "retries": 0,
            "failures": 0,
            "fast_failures": 0,
            "deadlines_exceeded": 0,
        }
        self._stats_lock = threading.Lock()
        self._model = config.model

    def _count(self, key: str, k: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += k

    @property
    def model(self) -> str:
        return self._model_name(None)

    def _model_name(self, deadline_at: float | None) -> str:
        if self._model is None:
            reply = self._request("GET", "models", None, deadline_at=deadline_at)
            try:
                self._model = str(reply["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise MalformedReply(f"{self.config.base_url}/models lists no model: {str(reply)[:200]}") from None
        return self._model

    def _exchange(
        self, method: str, path: str, body: dict | None, until: float, stop: threading.Event
    ) -> tuple[int, bytes, str]:
        """(status, body bytes, encoding), read in chunks; stops at ``until`` or once ``stop`` is set."""
        left = until - time.monotonic()
        if left <= 0:
            raise _OutOfTime
        timeout = httpx.Timeout(min(self.config.timeout_s, left), connect=min(self.config.connect_timeout_s, left))
        with self._http.stream(method, path, json=body, timeout=timeout) as response:
            chunks = []
            for chunk in response.iter_bytes():
                if stop.is_set() or time.monotonic() > until:
                    raise _OutOfTime
                chunks.append(chunk)
            return response.status_code, b"".join(chunks), response.encoding or "utf-8"

    def _attempt(self, method: str, path: str, body: dict | None, until: float) -> Any:
        """One attempt, over by ``until`` whatever the server does: it runs in its own thread and is abandoned
        (it stops at its next chunk, or when its socket timeout fires) when ``until`` passes; raises _OutOfTime."""
        box: concurrent.futures.Future = concurrent.futures.Future()
        stop = threading.Event()

        def work():
            try:
                box.set_result(self._exchange(method, path, body, until, stop))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box.set_exception(e)

        threading.Thread(target=work, name="openai-client-attempt", daemon=True).start()
        try:
            status, raw, encoding = box.result(timeout=max(until - time.monotonic(), 0.0))
        except concurrent.futures.TimeoutError:
            stop.set()
            raise _OutOfTime from None
        try:
            text = raw.decode(encoding, errors="replace")
        except LookupError:  # a charset Python does not know
            text = raw.decode("utf-8", errors="replace")
        if status in RETRY_STATUS:
            raise _Retryable(f"HTTP {status} from {path}: {text[:200]}")
        if status != 200:
            raise RemoteError(f"HTTP {status} from {self.config.base_url}/{path}: {text[:300]}")
        try:
            return json.loads(raw)
        except ValueError:
            raise _Retryable(f"malformed JSON body from {path}: {text[:200]!r}", malformed=True) from None

    def _request(
        self,
        method: str,
        path: str,
        body: dict | None,
        check=None,
        deadline_at: float | None = None,
        started: float | None = None,
    ) -> Any:
        """One call: retries with backoff, then the breaker's verdict. ``check(reply)`` raises MalformedReply for
        a body that parses as JSON but is not the expected shape (retried like a malformed body). The call ends by
        ``deadline_at`` (monotonic) or ``call_deadline_s`` after it started, whichever is first."""
        cfg, last = self.config, None
        url = f"{cfg.base_url.rstrip('/')}/{path}"
        if deadline_at is not None and time.monotonic() >= deadline_at:  # e.g. queued behind calls that used it up
            self._count("deadlines_exceeded")
            raise DeadlineExceeded(f"{url}: the shared deadline passed before this call started; nothing was sent")
        try:
            self.breaker.before_call()
        except CircuitOpenError:
            self._count("fast_failures")
            raise
        self._count("calls")
        started = time.monotonic() if started is None else started
        deadline = started + cfg.call_deadline_s
        if deadline_at is not None:
            deadline = min(deadline, deadline_at)

        def out_of_time(attempts: int, why: str) -> DeadlineExceeded:
            self.breaker.record(False)
            self._count("failures")
            self._count("deadlines_exceeded")
            earlier = f"; the attempt before failed with: {last}" if last else ""
            return DeadlineExceeded(
                f"{url}: no reply within the call's deadline of {deadline - started:.1f}s "
                f"({why}; {attempts} attempt(s) made{earlier})"
            )

        for attempt in range(cfg.max_retries + 1):
            if attempt:
                delay = cfg.backoff_cap(attempt) * (0.5 + random.random() / 2)
                if time.monotonic() + delay >= deadline:
                    raise out_of_time(attempt, f"the retry after a {delay:.2f}s backoff would start past it")
                self._count("retries")
                log.info("retrying %s in %.2fs after: %s", path, delay, last)
                time.sleep(delay)
            if time.monotonic() >= deadline:
                raise out_of_time(attempt, "it passed before this attempt could start")
            self._count("attempts")
            until = min(time.monotonic() + cfg.timeout_s, deadline)
            try:
                reply = self._attempt(method, path, body, until)
                if check is not None:
                    check(reply)
                self.breaker.record(True)
                return reply
            except _OutOfTime:
                if until >= deadline:
                    raise out_of_time(attempt + 1, "the last attempt was still waiting for its reply") from None
                last = f"no complete reply within timeout_s={cfg.timeout_s}"
            except (httpx.TimeoutException, httpx.TransportError) as e:
                if isinstance(e, httpx.TimeoutException) and time.monotonic() >= deadline:
                    raise out_of_time(attempt + 1, f"the last attempt timed out at it: {type(e).__name__}") from None
                last = f"{type(e).__name__}: {e}"
            except _Retryable as e:
                last = str(e)
            except MalformedReply as e:
                last = f"malformed reply: {e}"
            except RemoteError:
                self.breaker.record(False)
                self._count("failures")
                raise
        self.breaker.record(False)
        self._count("failures")
        raise RemoteError(f"{url}: failed after {cfg.max_retries + 1} attempts; last error: {last}")

    def completions(self, prompts: Sequence[str], *, deadline_at: float | None = None, **knobs) -> list[str]:
        """One text per prompt (n=1), in order; ``knobs`` are OpenAI fields (max_tokens, temperature, stop, ...)."""
        prompts = list(prompts)
        if not prompts:
            return []
        started = time.monotonic()
        body = {"model": self._model_name(deadline_at), "prompt": prompts, **knobs}

        def check(reply):
            choices = reply.get("choices") if isinstance(reply, dict) else None
            if (
                not isinstance(choices, list)
                or len(choices) != len(prompts)
                or not all(
                    isinstance(c, dict) and isinstance(c.get("text"), str) and isinstance(c.get("index"), int)
                    for c in choices
                )
                or sorted(c["index"] for c in choices) != list(range(len(prompts)))
            ):
                raise MalformedReply(f"expected {len(prompts)} choices with text and index: {str(reply)[:200]}")

        reply = self._request("POST", "completions", body, check, deadline_at, started)
        return [c["text"] for c in sorted(reply["choices"], key=lambda c: c["index"])]

    def chat(self, messages: Sequence[dict], *, deadline_at: float | None = None, **knobs) -> str:
        started = time.monotonic()
        body = {"model": self._model_name(deadline_at), "messages": list(messages), **knobs}

        def check(reply):
            try:
                content = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                content = None
            if not isinstance(content, str):
                raise MalformedReply(f"expected choices[0].message.content: {str(reply)[:200]}")

        return self._request("POST", "chat/completions", body, check, deadline_at, started)["choices"][0]["message"][
            "content"
        ]

    def close(self) -> None:
        self._http.close()


class _OutOfTime(Exception):
    """An attempt reached its end time (its own timeout_s or the call's deadline)."""


class _Retryable(RemoteError):
    def __init__(self, message: str, malformed: bool = False):
        super().__init__(message)
        self.malformed = malformed
