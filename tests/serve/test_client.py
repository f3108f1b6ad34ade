"""Fast unit tests: the client's retries and breaker over an httpx mock transport, its total deadline against a real
local server that trickles its replies, fault specs, and the batching queue's grouping over a recording fake
sampler."""

from pathlib import Path
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from synpro_jax.serve import CircuitBreaker, CircuitOpenError, ClientConfig, OpenAIClient, RemoteError
from synpro_jax.serve.batching import GenerationQueue, GenRequest, Knobs
from synpro_jax.serve.client import DeadlineExceeded
from synpro_jax.serve.server import Fault, FaultInjector, parse_faults

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slow_http import ScriptedServer  # noqa: E402

HANG_GUARD_S = 3.0  # slack over a deadline before a call counts as hung (a guard, not a benchmark)


def mock_client(handler, **kw):
    cfg = ClientConfig(base_url="http://judge.test/v1", model="m", backoff_s=0.0, **kw)
    return OpenAIClient(cfg, transport=httpx.MockTransport(handler))


def ok_reply(n=1):
    return {"choices": [{"index": i, "text": f"t{i}"} for i in range(n)]}


def test_retries_5xx_and_timeouts_then_succeeds():
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(502, text="bad gateway")
        if len(calls) == 2:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json=ok_reply(2))

    c = mock_client(handler, max_retries=3)
    assert c.completions(["a", "b"], max_tokens=3) == ["t0", "t1"]
    assert c.stats["retries"] == 2 and len(calls) == 3
    assert calls[-1].headers["authorization"] == "Bearer EMPTY"


def test_4xx_is_not_retried_and_names_the_status():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(400, json={"error": {"message": "max_tokens=0"}})

    with pytest.raises(RemoteError, match="HTTP 400.*max_tokens"):
        mock_client(handler).completions(["a"])
    assert len(calls) == 1


def test_wrong_choice_count_is_a_malformed_reply():
    c = mock_client(lambda r: httpx.Response(200, json=ok_reply(1)), max_retries=1)
    with pytest.raises(RemoteError, match="2 attempts.*expected 2 choices"):
        c.completions(["a", "b"])


def test_breaker_opens_after_n_failures_and_half_opens_after_the_cooldown():
    now = [0.0]
    b = CircuitBreaker(failures=3, cooldown_s=10.0, clock=lambda: now[0])
    for _ in range(2):
        b.before_call()
        b.record(False)
    assert b.state == "closed"
    b.before_call()
    b.record(False)
    assert b.state == "open"
    with pytest.raises(CircuitOpenError, match="3 consecutive"):
        b.before_call()
    now[0] = 10.0
    b.before_call()  # the half-open trial
    with pytest.raises(CircuitOpenError):
        b.before_call()  # only one trial at a time
    b.record(False)  # the trial failed: open for another cooldown
    assert b.state == "open"
    now[0] = 20.0
    b.before_call()
    b.record(True)
    assert b.state == "closed" and b.consecutive == 0


def test_client_config_names_bad_knobs():
    with pytest.raises(ValueError, match="base_url"):
        ClientConfig(base_url="127.0.0.1:8000")
    with pytest.raises(ValueError, match="timeout_s"):
        ClientConfig(base_url="http://x/v1", timeout_s=0)
    with pytest.raises(ValueError, match="breaker_failures"):
        ClientConfig(base_url="http://x/v1", breaker_failures=0)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="deadline_s"):
            ClientConfig(base_url="http://x/v1", deadline_s=bad)


def test_a_call_without_deadline_s_is_bounded_by_its_retries_worst_case():
    cfg = ClientConfig(base_url="http://x/v1", timeout_s=2.0, max_retries=3, backoff_s=0.5, max_backoff_s=1.5)
    assert cfg.call_deadline_s == pytest.approx(4 * 2.0 + 0.5 + 1.0 + 1.5)
    assert ClientConfig(base_url="http://x/v1", deadline_s=7.0).call_deadline_s == 7.0


def chat_client(url, **kw):
    return OpenAIClient(ClientConfig(base_url=url, model="judge", **kw))


@pytest.mark.parametrize("action", ["trickle", "trickle_body"])
def test_a_trickled_reply_fails_at_the_call_deadline_naming_the_url(action):
    """One byte every 0.2 s resets a per-read timeout forever (the reply below takes ~30 s to arrive in full);
    the call's deadline ends it, whether the status line and headers or only the body trickle."""
    with ScriptedServer([action]) as server:
        c = chat_client(server.url, timeout_s=30.0, max_retries=2, backoff_s=0.01, deadline_s=1.5)
        t = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"127\.0\.0\.1:\d+/v1/chat/completions.*deadline of 1\.5s"):
            c.chat([{"role": "user", "content": "hi"}])
        assert time.monotonic() - t < 1.5 + HANG_GUARD_S
        assert c.stats["deadlines_exceeded"] == 1 and c.stats["failures"] == 1 and c.breaker.consecutive == 1
        assert len(server.requests) == 1  # one attempt held until the deadline, then no retry


def test_timeout_s_bounds_a_whole_attempt_and_the_retry_succeeds():
    with ScriptedServer(["trickle", "ok"]) as server:
        c = chat_client(server.url, timeout_s=1.0, max_retries=2, backoff_s=0.01, deadline_s=20.0)
        t = time.monotonic()
        assert c.chat([{"role": "user", "content": "hi"}]) == "1"
        assert time.monotonic() - t < 1.0 + HANG_GUARD_S  # not the ~30 s the trickle would take
        assert c.stats["retries"] == 1 and c.stats["deadlines_exceeded"] == 0
        assert [a for a, _ in server.requests] == ["trickle", "ok"]


def test_the_default_deadline_bounds_a_trickle_with_timeout_s_alone():
    """The finding's setting: timeout_s=1 and no deadline_s; the call ends by 2 attempts of 1 s plus a backoff."""
    with ScriptedServer(["trickle"]) as server:
        c = chat_client(server.url, timeout_s=1.0, max_retries=1, backoff_s=0.01)
        t = time.monotonic()
        with pytest.raises(RemoteError, match="chat/completions"):
            c.chat([{"role": "user", "content": "hi"}])
        assert time.monotonic() - t < c.config.call_deadline_s + HANG_GUARD_S
        assert len(server.requests) >= 2  # timed-out attempts were retried


def test_500s_then_success_within_the_deadline():
    with ScriptedServer(["500", "500", "ok"], content="0") as server:
        c = chat_client(server.url, timeout_s=5.0, max_retries=3, backoff_s=0.05, deadline_s=10.0)
        t = time.monotonic()
        assert c.chat([{"role": "user", "content": "hi"}]) == "0"
        assert time.monotonic() - t < 10.0 + HANG_GUARD_S
        assert c.stats["retries"] == 2 and c.stats["failures"] == 0 and c.breaker.state == "closed"


def test_a_backoff_that_would_pass_the_deadline_fails_at_once():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(503, text="busy")

    c = OpenAIClient(
        ClientConfig(
            base_url="http://judge.test/v1",
            model="m",
            backoff_s=30.0,
            max_backoff_s=30.0,
            max_retries=3,
            deadline_s=5.0,
        ),
        transport=httpx.MockTransport(handler),
    )
    t = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="judge.test/v1/completions.*backoff.*HTTP 503"):
        c.completions(["a"])
    assert time.monotonic() - t < HANG_GUARD_S  # it did not sleep 15-30 s first
    assert len(calls) == 1 and c.stats["retries"] == 0


def test_a_shared_deadline_at_caps_the_call():
    with ScriptedServer(["trickle"]) as server:
        c = chat_client(server.url, timeout_s=30.0, max_retries=0, deadline_s=60.0)
        t = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="chat/completions"):
            c.chat([{"role": "user", "content": "hi"}], deadline_at=time.monotonic() + 1.0)
        assert time.monotonic() - t < 1.0 + HANG_GUARD_S


def test_fault_spec_parsing():
    assert [(f.kind, f.count, f.delay_s) for f in parse_faults("slow:2:1.5, 5xx:1")] == [
        ("slow", 2, 1.5),
        ("5xx", 1, 1.0),
    ]
    with pytest.raises(ValueError, match="SYNPRO_SERVE_FAULTS entry 'boom:1'"):
        parse_faults("boom:1")
    inj = FaultInjector([Fault("drop", 2), Fault("5xx", 1)])
    assert [inj.take().kind, inj.take().kind, inj.take().kind, inj.take()] == ["drop", "drop", "5xx", None]


class RecordingSampler:
    """Answers each row with [stream_id, budget, eos]; blocks the first call until released."""

    def __init__(self):
        self.calls, self.release = [], threading.Event()

    def generate(self, prompts, *, max_new_tokens, temperature, top_k, top_p, seed, eos_id, pad_id, stream_ids):
        self.release.wait(10)
        self.calls.append((len(prompts), temperature, seed))
        rows = [[s, b, eos_id[0]] for s, b in zip(stream_ids, max_new_tokens)]
        return SimpleNamespace(tokens=np.array(rows), lengths=np.full(len(rows), 3), finished=np.ones(len(rows), bool))


def test_queue_batches_requests_with_equal_knobs_and_keeps_each_rows_stream():
    sampler = RecordingSampler()
    q = GenerationQueue(sampler, stop_ids=[9], max_rows=8, batch_wait_s=0.0)
    greedy, hot = Knobs(), Knobs(temperature=1.0, seed=3)
    first = q.submit(GenRequest([[1]], [4], [0], greedy))
    time.sleep(0.2)  # the device thread holds `first` and blocks in generate
    later = [
        q.submit(GenRequest([[1], [2]], [5, 6], [0, 1], greedy)),
        q.submit(GenRequest([[3]], [7], [0], hot)),
        q.submit(GenRequest([[1]], [8], [0], greedy)),
    ]
    sampler.release.set()
    results = [f.result(10) for f in [first, *later]]
    q.close()
    assert sampler.calls == [(1, 0.0, 0), (3, 0.0, 0), (1, 1.0, 3)]  # the greedy ones together, the hot one alone
    assert list(q.batches) == [(1, 1), (2, 3), (1, 1)]
    assert [[r.tokens for r in res] for res in results] == [[[0, 4]], [[0, 5], [1, 6]], [[0, 7]], [[0, 8]]]
    assert all(r.finished for res in results for r in res)  # the stop id is dropped from the text


def test_queue_refuses_a_request_larger_than_max_rows():
    q = GenerationQueue(RecordingSampler(), stop_ids=[9], max_rows=2)
    with pytest.raises(ValueError, match="max_rows=2"):
        q.submit(GenRequest([[1]] * 3, [1] * 3, [0, 1, 2], Knobs()))
    q.close()


def test_a_failed_device_call_answers_its_requests_and_the_queue_goes_on():
    class Flaky(RecordingSampler):
        def generate(self, prompts, **kw):
            if not self.calls:
                self.calls.append("boom")
                raise RuntimeError("device lost")
            return super().generate(prompts, **kw)

    sampler = Flaky()
    sampler.release.set()
    q = GenerationQueue(sampler, stop_ids=[9], batch_wait_s=0.0)
    with pytest.raises(RuntimeError, match="device lost"):
        q.submit(GenRequest([[1]], [2], [0], Knobs())).result(10)
    assert q.submit(GenRequest([[1]], [2], [0], Knobs())).result(10)[0].tokens == [0, 2]
    q.close()
