"""Remote judge rewards: known values from a rule-based stub judge (an OpenAI-compatible server in this process),
their parsers and error paths, transport faults, both on the stub and on a real `synpro serve` process, and the
reward call's total deadline against a real local server that trickles its replies."""

from pathlib import Path
import re
import sys
import threading
import time

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
import uvicorn

from synpro_jax.rl.rewards import remote
from synpro_jax.rl.rewards.base import RewardError, RewardInputs, RewardSuite, make_reward
from synpro_jax.serve.server import Fault, FaultInjector, FaultMiddleware

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_helpers import ServeProcess, free_port, make_model_dir  # noqa: E402
from slow_http import ScriptedServer  # noqa: E402

REPHRASE = "Here is the rewritten document:"
REFORMAT = "Here are the structured entries drawn from the document:"


def judge(prompt: str) -> str:
    """Rules standing in for the judge models: what a trained judge would answer, in the formats they use."""
    if "GARBLE" in prompt:
        return "I would rather not say."
    said = re.search(r"JUDGE SAYS <<(.*?)>>", prompt, re.DOTALL)
    if said:  # a reply chosen by the test
        return said.group(1)
    if "Overall Score (1-5)" in prompt:
        text = prompt.split("Text: ", 1)[1].rsplit("\nOverall Score", 1)[0]
        score = min(1 + text.count("good"), 5)
        return f"Overall Score: {score}" if "verbose" in text else str(score)
    if "Answer (0 or 1)" in prompt:
        original = prompt.split("Original:\n", 1)[1].split("\n\nRewritten:\n", 1)[0]
        rewritten = prompt.split("\n\nRewritten:\n", 1)[1].rsplit("\n\nAnswer", 1)[0]
        return "Both are lists.\n1" if ("\n- " in original) == ("\n- " in rewritten) else "0"
    if "Topic/Content entries" in prompt:
        source = prompt.split("Source:\n", 1)[1].split("\n\nEntries:\n", 1)[0]
        entries = prompt.split("\n\nEntries:\n", 1)[1].split("\n\nReply with", 1)[0].splitlines()
        lines = []
        for line in entries:
            num, topic, content = re.match(r"(\d+)\. Topic: (.*) Content: (.*)", line).groups()
            if topic.lower() not in source.lower():
                label = "Unfaithful_Topic"
            elif all(w in source.lower() for w in re.findall(r"[a-z]+", content.lower())):
                label = "Faithful"
            else:
                label = "Unfaithful_Content"
            lines.append(f"{num}. {label}")
        return "\n".join(lines)
    return "?"


def stub_app():
    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "stub-judge", "object": "model"}]})

    async def completions(request: Request):
        body = await request.json()
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        return JSONResponse(
            {"choices": [{"index": i, "text": judge(p), "finish_reason": "stop"} for i, p in enumerate(prompts)]}
        )

    async def chat(request: Request):
        body = await request.json()
        assert body["messages"][0]["role"] == "system"
        return JSONResponse(
            {
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": judge(body["messages"][-1]["content"])},
                        "finish_reason": "stop",
                    }
                ]
            }
        )

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


@pytest.fixture(scope="module")
def stub():
    injector = FaultInjector()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(FaultMiddleware(stub_app(), injector), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the stub judge did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", injector
    server.should_exit = True
    thread.join(10)


FAST = dict(timeout_s=5.0, max_retries=2, backoff_s=0.01)


def rephrase_inputs(sources, outputs, group=None):
    return RewardInputs("rephrase", sources, outputs, np.asarray(group if group is not None else range(len(outputs))))


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_quality_is_output_score_minus_source_score(stub, api):
    url, _ = stub
    reward = make_reward("quality_remote", base_url=url, api=api, **FAST)
    sources = ["plain text", "plain text", "a good verbose source"]
    outputs = [f"{REPHRASE} good good text", "no heading at all, good", f"{REPHRASE} good verbose good good"]
    # scores: outputs 3, 1 (nothing after a heading is judged: the empty text), 4; sources 1, 1, 2
    np.testing.assert_array_equal(reward(rephrase_inputs(sources, outputs, [0, 0, 1])), [2.0, 0.0, 2.0])
    assert list(reward._source_scores) == ["plain text", "a good verbose source"]  # each source scored once
    calls = reward.judge.client.stats["calls"]
    reward(rephrase_inputs(sources[:1], outputs[:1]))
    assert reward.judge.client.stats["calls"] - calls == 1  # the output only: its source is cached


def test_structure_is_the_judges_zero_or_one(stub):
    url, _ = stub
    reward = make_reward("structure_remote", base_url=url, **FAST)
    sources = ["Intro\n- one\n- two", "Just prose here.", "Just prose."]
    outputs = [f"{REPHRASE}\nIntro\n- uno\n- dos", f"{REPHRASE}\nList\n- a\n- b", f"{REPHRASE} Prose again."]
    np.testing.assert_array_equal(reward(rephrase_inputs(sources, outputs)), [1.0, 0.0, 1.0])
    with pytest.raises(RewardError, match="rephrase"):
        reward(RewardInputs("reformat", sources, outputs, np.arange(3)))


def test_faithfulness_is_the_fraction_faithful_against_the_first_3000_chars(stub):
    url, _ = stub
    reward = make_reward("faithfulness_remote", base_url=url, api="completions", **FAST)
    source = "Rivers carry stones to the sea. Cats sleep under the green light."
    late = "x" * 3000 + " Dogs read maps."
    outputs = [
        f"{REFORMAT}\n- Topic: Rivers Content: rivers carry stones\n- Topic: Cats Content: cats sleep\n"
        f"- Topic: Cats Content: cats fly\n- Topic: Planets Content: planets spin",  # 2 of 4 faithful
        "no heading, no entries",  # 0, and no call
        f"{REFORMAT}\n- Topic: Dogs Content: dogs read maps",  # dogs are beyond the first 3000 chars: 0
        f"{REFORMAT}\n1. Topic: Rivers Content: rivers carry stones to the sea",  # 1
    ]
    inputs = RewardInputs("reformat", [source, source, late, source], outputs, np.arange(4))
    assert reward.judge.client.model == "stub-judge"  # no model named: the one GET /models lists
    calls = reward.judge.client.stats["calls"]
    np.testing.assert_allclose(reward(inputs), [0.5, 0.0, 0.0, 1.0])
    assert reward.judge.client.stats["calls"] - calls == 1  # one completions request for the 3 with entries


def test_parsers():
    assert [
        remote.parse_quality_score(r) for r in ["4", " 3/5 ", "**5**", "Overall Score: 2", "<think>x</think>1"]
    ] == [4, 3, 5, 2, 1]
    for bad in ["", "7", "about 3 or 4", "Overall Score: 9"]:
        with pytest.raises(RewardError, match="quality judge"):
            remote.parse_quality_score(bad)
    with pytest.raises(RewardError, match="structure judge"):
        remote.parse_structure_verdict("yes")
    assert remote.parse_faithfulness_labels("2. Unfaithful_Topic\n1. faithful", 3) == [
        "Faithful",
        "Unfaithful_Topic",
        "",
    ]
    assert remote.parse_faithfulness_labels("Faithful\nUnfaithful_Content", 2) == ["Faithful", "Unfaithful_Content"]
    with pytest.raises(RewardError, match="faithfulness judge"):
        remote.parse_faithfulness_labels("all good", 2)


STRUCTURE_ACCEPTED = [
    ("1", 1),
    ("0", 0),
    (" 1 \n", 1),
    ("\n\n0", 0),
    ("Both are bullet lists.\n1", 1),
    ("The original is prose, the rewrite a list.\n\n 0 \n\n", 0),
    ("<think>\nbullets on both sides, so 0 is wrong\n</think>\n\n1", 1),
    ("<think>\n\n</think>\n\n0", 0),
    ("<think>a</think>x<think>b</think>\n1", 1),
]
STRUCTURE_REJECTED = [
    "Error 500",
    "retry in 10",
    "10",
    "",
    "   \n ",
    "1.",
    "the answer is 1 or 0",
    "Output: 1",
    "`1`",
    "**0**",
    "1\nexplanation follows",
    "0 1",
    "01",
    "<think>\ncounting lists... 1",
    "<think>\n1\n</think>",
    "１",
]


@pytest.mark.parametrize("reply, verdict", STRUCTURE_ACCEPTED)
def test_structure_verdict_accepts_a_lone_digit_or_a_last_line_holding_only_it(reply, verdict):
    assert remote.parse_structure_verdict(reply) == verdict


@pytest.mark.parametrize("reply", STRUCTURE_REJECTED)
def test_structure_verdict_refuses_anything_else(reply):
    with pytest.raises(RewardError, match="structure judge"):
        remote.parse_structure_verdict(reply)


@pytest.mark.parametrize("reply", ["Error 500", "retry in 10", "10", "", "1.", "the answer is 1 or 0"])
def test_a_structure_reply_that_is_no_verdict_is_counted_as_a_failure(stub, reply):
    """The release would score these 0 (their last character is a 0, or not a digit); the suite counts a failure
    and applies the fallback, and without a fallback the step fails."""
    url, _ = stub
    reward = make_reward("structure_remote", base_url=url, **FAST)
    inputs = rephrase_inputs(
        ["Just prose.", "Just prose."], [f"{REPHRASE} Prose.", f"{REPHRASE} Prose. JUDGE SAYS <<{reply}>>"], [0, 0]
    )
    suite = RewardSuite({"structure_remote": reward}, {"structure_remote": 1.0}, {"structure_remote": -1.0})
    result = suite(inputs)
    assert result.failures == {"structure_remote": 2}  # the batch's value is the fallback, counted per completion
    np.testing.assert_array_equal(result.values["structure_remote"], [-1.0, -1.0])
    with pytest.raises(RewardError, match="structure_remote.*no fallback.*structure judge"):
        RewardSuite({"structure_remote": reward}, {"structure_remote": 1.0})(inputs)
    ok = rephrase_inputs(["Just prose."], [f"{REPHRASE} Prose. JUDGE SAYS <<Prose on both sides.\n1>>"])
    assert suite(ok).failures == {"structure_remote": 0} and suite(ok).values["structure_remote"][0] == 1.0


def test_unparseable_reply_is_an_error_never_a_zero(stub):
    url, _ = stub
    reward = make_reward("structure_remote", base_url=url, **FAST)
    inputs = rephrase_inputs(["src"], [f"{REPHRASE} GARBLE"])
    with pytest.raises(RewardError, match="structure judge"):
        reward(inputs)
    suite = RewardSuite({"structure_remote": reward}, {"structure_remote": 1.0}, {"structure_remote": -1.0})
    result = suite(inputs)
    assert result.failures == {"structure_remote": 1} and result.values["structure_remote"][0] == -1.0


def test_faults_on_the_stub_keep_the_values(stub):
    url, injector = stub
    reward = make_reward("structure_remote", base_url=url, timeout_s=0.5, max_retries=3, backoff_s=0.01)
    inputs = rephrase_inputs(["Just prose."], [f"{REPHRASE} Prose."])
    for fault in [Fault("slow", 1, 1.5), Fault("5xx", 2), Fault("drop", 1), Fault("malformed", 1)]:
        injector.add(fault)
        np.testing.assert_array_equal(reward(inputs), [1.0])
    assert dict(injector.injected) == {"slow": 1, "5xx": 2, "drop": 1, "malformed": 1}
    assert reward.judge.client.stats["retries"] == 5
    injector.add(Fault("malformed", 4))
    with pytest.raises(RewardError, match="4 attempts.*malformed"):
        reward(inputs)


def test_breaker_fails_fast_as_a_reward_error(stub):
    url, injector = stub
    reward = make_reward(
        "quality_remote",
        base_url=url,
        api="completions",
        max_retries=0,
        backoff_s=0.0,
        breaker_failures=2,
        breaker_cooldown_s=60.0,
    )
    inputs = rephrase_inputs(["src"], [f"{REPHRASE} good"])
    injector.add(Fault("5xx", 2))
    for _ in range(2):
        with pytest.raises(RewardError, match="503"):
            reward(inputs)
    with pytest.raises(RewardError, match="circuit open"):
        reward(inputs)
    assert dict(injector.injected).get("5xx") == 2 + 2  # the fast failure sent nothing (2 from the faults test)


def test_bad_knobs_are_named():
    with pytest.raises(ValueError, match="api="):
        make_reward("quality_remote", base_url="http://127.0.0.1:1/v1", api="grpc")
    with pytest.raises(ValueError, match="base_url"):
        make_reward("faithfulness_remote", base_url="localhost:8000")


@pytest.mark.slow
def test_remote_rewards_against_synpro_serve_with_each_fault(tmp_path):
    """The real server: transport faults are retried through to the judge's reply; a random tiny model's reply is
    not a score, so the reward fails loudly rather than returning 0; malformed bodies exhaust the retries."""
    model_dir, _ = make_model_dir(tmp_path)
    server = ServeProcess(model_dir)
    try:
        inputs = rephrase_inputs(["the cat sleeps"], [f"{REPHRASE} the dog runs"])
        warm = make_reward("quality_remote", base_url=server.url, api="completions", timeout_s=300.0)
        with pytest.raises(RewardError, match="quality judge: no 1-5"):
            warm(inputs)  # compiles the server's sampler for these shapes, without a short timeout
        reward = make_reward(
            "quality_remote",
            base_url=server.url,
            api="completions",
            timeout_s=2.0,
            max_retries=2,
            backoff_s=0.01,
            breaker_failures=50,
        )
        with pytest.raises(RewardError, match="quality judge: no 1-5"):
            reward(inputs)
        stats = reward.judge.client.stats
        for kind, count, delay in [("slow", 1, 4.0), ("5xx", 2, 0.0), ("drop", 1, 0.0)]:
            server.fault(kind, count, delay)
            retries = stats["retries"]
            with pytest.raises(RewardError, match="quality judge: no 1-5"):  # the retry reached the model
                reward(inputs)
            assert stats["retries"] - retries == count, kind
        server.fault("malformed", 3)
        with pytest.raises(RewardError, match="3 attempts.*malformed"):
            reward(inputs)
        assert server.stats()["faults_injected"] == {"slow": 1, "5xx": 2, "drop": 1, "malformed": 3}
    finally:
        server.stop()


HANG_GUARD_S = 3.0  # slack over a deadline before a reward call counts as hung (a guard, not a benchmark)


@pytest.mark.parametrize("api", [pytest.param("chat", marks=pytest.mark.slow), "completions"])  # seconds of waiting
def test_a_trickling_judge_fails_the_reward_call_at_its_deadline(api):
    """A judge that sends its reply one byte every 0.2 s (the whole reply would take ~30 s): the reward call ends
    at deadline_s with a RewardError naming the server and the deadline, and the suite counts the failure."""
    with ScriptedServer(["trickle"]) as server:
        reward = make_reward(
            "structure_remote",
            base_url=server.url,
            model="judge",
            api=api,
            timeout_s=30.0,
            max_retries=3,
            backoff_s=0.01,
            deadline_s=2.0,
            concurrency=2,
            breaker_failures=100,
        )
        inputs = rephrase_inputs(["Just prose."] * 5, [f"{REPHRASE} Prose {i}." for i in range(5)], [0] * 5)
        t = time.monotonic()
        with pytest.raises(RewardError, match=re.escape(server.url) + r"/.*completions.*deadline"):
            reward(inputs)
        assert time.monotonic() - t < 2.0 + HANG_GUARD_S
        with pytest.raises(RewardError, match=r"structure_remote: the reward call's deadline_s=2 passed"):
            reward(inputs)
        suite = RewardSuite({"structure_remote": reward}, {"structure_remote": 1.0}, {"structure_remote": 0.5})
        t = time.monotonic()
        result = suite(inputs)
        assert time.monotonic() - t < 2.0 + HANG_GUARD_S
        assert result.failures == {"structure_remote": 5}
        assert reward.judge.client.stats["deadlines_exceeded"] >= 3
        # each call sent only what was in flight (chat: `concurrency` requests; completions: one); the prompts
        # still queued when the deadline passed were never sent
        assert len(server.requests) == 3 * (2 if api == "chat" else 1)


def test_the_default_deadline_bounds_a_reward_call_with_timeout_s_alone():
    """The finding: timeout_s=1 held a trickled reward call for 85 s. Without deadline_s the call now ends by its
    attempts' timeouts plus the backoffs between them."""
    with ScriptedServer(["trickle"]) as server:
        reward = make_reward(
            "quality_remote", base_url=server.url, model="judge", timeout_s=1.0, max_retries=1, backoff_s=0.01
        )
        assert reward.judge.deadline_s == pytest.approx(2 * 1.0 + 0.01)
        t = time.monotonic()
        with pytest.raises(RewardError, match=re.escape(server.url)):
            reward(rephrase_inputs(["src"], [f"{REPHRASE} good"]))
        assert time.monotonic() - t < reward.judge.deadline_s + HANG_GUARD_S


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_a_judge_answering_500s_then_a_verdict_works_within_the_deadline(api):
    content = "The layouts match.\n1"
    with ScriptedServer(["500", "500", "ok"], content=content) as server:
        reward = make_reward(
            "structure_remote",
            base_url=server.url,
            model="judge",
            api=api,
            timeout_s=5.0,
            max_retries=3,
            backoff_s=0.05,
            deadline_s=10.0,
        )
        t = time.monotonic()
        np.testing.assert_array_equal(reward(rephrase_inputs(["Just prose."], [f"{REPHRASE} Prose."])), [1.0])
        assert time.monotonic() - t < 10.0 + HANG_GUARD_S
        assert reward.judge.client.stats["retries"] == 2
        assert [a for a, _ in server.requests] == ["500", "500", "ok"]
