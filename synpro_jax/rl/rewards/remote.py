"""Model-based rewards judged by a remote OpenAI-compatible server (vLLM, ``synpro serve``, ...).

Registered as ``quality_remote``, ``structure_remote`` and ``faithfulness_remote``. The judges follow the SynPro
release's (facts only, our own wording):

- quality: a DataMan-style rater gives the text an overall score on a 1-5 scale; reward = score(output) -
  score(source). A source is scored once per distinct text and cached (not once per completion).
- structure (rephrase): a judge answers 1 if the rewrite keeps the source's layout, else 0. The verdict is read
  strictly: with any ``<think>...</think>`` block removed, the reply's last non-empty line must be exactly ``0`` or
  ``1`` (so a bare digit, or a digit on its own line after an explanation). The release takes the reply's last
  character and scores anything that is not 0 or 1 as 0; here "Error 500", "retry in 10" or "1." raise, and the
  suite counts a failure rather than a silent 0.
- faithfulness (reformat): a verifier labels each Topic/Content pair, against the source's first 3,000
  characters, as Faithful / Unfaithful_Topic / Unfaithful_Content, one numbered line per pair; reward = fraction
  Faithful, and 0 when no pair parses (no call is made). A pair the reply leaves unlabelled counts as not Faithful,
  as in the release.

The text judged is what follows the operation's heading (empty when the heading is missing), as in the release.
Calls go through :class:`synpro_jax.serve.client.OpenAIClient` (timeouts, retries with backoff, a circuit
breaker). Every reward call has a total deadline, ``deadline_s``: all its judge requests (queued, concurrent or
batched), their retries, backoff sleeps and replies however slowly they trickle in end by then. The default is
the worst case of one request's retries, ``(max_retries + 1) * timeout_s`` plus the longest backoffs; ``timeout_s``
bounds one attempt as a whole (not each socket read). An unparseable reply, exhausted retries, a passed deadline or
an open breaker raise :class:`RewardError`; never a 0.

The judging (prompts, parsing, source cache) is in :class:`QualityJudgeReward`, :class:`StructureJudgeReward` and
:class:`FaithfulnessJudgeReward`, over a pluggable transport (:class:`Judge`): the ``*_remote`` rewards give them a
:class:`RemoteJudge`; ``judge_model.py``'s ``quality_judge``, ``structure_judge`` and ``faithfulness_judge`` the
same judging on a judge model sharded on the run's mesh, with no server.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
import concurrent.futures
import re
import threading
import time
from typing import Protocol

import numpy as np

from synpro_jax.generation import prompts as prompts_lib
from synpro_jax.rl.rewards.base import RewardError, RewardInputs, register_reward
from synpro_jax.serve.client import ClientConfig, DeadlineExceeded, OpenAIClient, RemoteError

APIS = ("chat", "completions")
FAITHFULNESS_SOURCE_CHARS = 3000
JUDGE_SYSTEM = "You are a precise evaluator. Answer in exactly the format requested."

QUALITY_PROMPT = """Rate the overall quality of the text below as pretraining data for a language model, on an \
integer scale from 1 (very poor) to 5 (excellent). Consider fluency, coherence, informativeness and cleanliness.
Text: {text}
Overall Score (1-5):"""

STRUCTURE_PROMPT = """Compare the layout of two texts: an original and a rewritten version.
Judge only the structure and presentation (paragraphs, bullet or numbered lists, headings, tables, code blocks, \
JSON, markdown or plain prose), not the wording or the meaning.
Answer with a single character: 1 if the rewritten version keeps the original's structure, 0 if it does not.

Original:
{original}

Rewritten:
{rewritten}

Answer (0 or 1):"""

FAITHFULNESS_PROMPT = """Below is a source text and numbered Topic/Content entries written from it.
Label each entry:
- Faithful: the topic is covered or clearly implied by the source, and the content is correct and supported by it.
- Unfaithful_Topic: the topic is not covered or implied by the source.
- Unfaithful_Content: the topic is fine, but the content is wrong, unsupported or contradicts the source.

Source:
{source}

Entries:
{entries}

Reply with one line per entry, in order, as "<number>. <label>", and nothing else."""

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_OVERALL = re.compile(r"overall\s*score[^0-9]{0,20}([1-5])(?![0-9.])", re.IGNORECASE)
_BARE_SCORE = re.compile(r"\s*\**([1-5])(?:\.0)?\**\s*(?:/\s*5)?\s*\.?\s*")
_LABEL = re.compile(r"\b(Faithful|Unfaithful_Topic|Unfaithful_Content)\b", re.IGNORECASE)
_NUMBERED = re.compile(r"^\s*(\d+)\s*[.):\-]")


def parse_quality_score(reply: str) -> int:
    """The 1-5 overall score in a rater's reply ("4", "4/5", "Overall Score: 4", ...); RewardError otherwise."""
    text = _THINK.sub("", reply or "").strip()
    m = _BARE_SCORE.fullmatch(text) or _OVERALL.search(text)
    if m is None:
        raise RewardError(f"quality judge: no 1-5 overall score in the reply {text[:120]!r}")
    return int(m.group(1))


def parse_structure_verdict(reply: str) -> int:
    """0 or 1: the reply without its ``<think>...</think>`` blocks is exactly that digit, or its last non-empty line
    is (whitespace stripped). RewardError for anything else ("Error 500", "10", "1.", "", an unclosed <think>)."""
    text = _THINK.sub("", reply or "")
    if "<think>" in text:
        raise RewardError(
            f"structure judge: the reply's <think> block is not closed (max_tokens too small?): {text[-120:]!r}"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[-1] not in ("0", "1"):
        raise RewardError(
            f"structure judge: the reply is not 0 or 1, nor does its last line hold only 0 or 1: "
            f"{text.strip()[-120:]!r}"
        )
    return int(lines[-1])


def parse_faithfulness_labels(reply: str, num_entries: int) -> list[str]:
    """One label per entry, in order (a numbered line goes to its number; unnumbered lines fill in order).
    Entries left unlabelled are ""; a reply with no label at all raises RewardError."""
    text = _THINK.sub("", reply or "")
    labels = [""] * num_entries
    found, cursor = 0, 0
    for line in text.splitlines():
        m = _LABEL.search(line)
        if m is None:
            continue
        label = {
            "faithful": "Faithful",
            "unfaithful_topic": "Unfaithful_Topic",
            "unfaithful_content": "Unfaithful_Content",
        }[m.group(1).lower()]
        num = _NUMBERED.match(line)
        index = int(num.group(1)) - 1 if num else cursor
        if 0 <= index < num_entries and not labels[index]:
            labels[index] = label
            found += 1
        cursor = index + 1
    if num_entries and not found:
        raise RewardError(
            f"faithfulness judge: no Faithful/Unfaithful_Topic/Unfaithful_Content label in the reply {text[:160]!r}"
        )
    return labels


class RemoteJudge:
    """Prompts to one endpoint through chat or completions, concurrently, with the client's resilience."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api: str = "chat",
        max_tokens: int = 32,
        temperature: float = 0.0,
        seed: int | None = 1024,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 30.0,
        api_key: str = "EMPTY",
        deadline_s: float | None = None,
        client: OpenAIClient | None = None,
        name: str = "judge",
    ):
        if api not in APIS:
            raise ValueError(f"{name}: api={api!r} must be one of {APIS}")
        if concurrency < 1 or max_tokens < 1:
            raise ValueError(f"{name}: concurrency={concurrency} and max_tokens={max_tokens} must be >= 1")
        self.name, self.api, self.concurrency = name, api, concurrency
        self.knobs = {"max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            self.knobs["seed"] = seed
        self.client = client or OpenAIClient(
            ClientConfig(
                base_url=base_url,
                model=model,
                api_key=api_key,
                timeout_s=timeout_s,
                max_retries=max_retries,
                backoff_s=backoff_s,
                max_backoff_s=max_backoff_s,
                breaker_failures=breaker_failures,
                breaker_cooldown_s=breaker_cooldown_s,
                deadline_s=deadline_s,
            )
        )
        # One reward call's total time: the given deadline_s, or one request's worst case with its retries.
        self.deadline_s = float(deadline_s) if deadline_s is not None else self.client.config.call_deadline_s
        if not (self.deadline_s > 0 and self.deadline_s < float("inf")):
            raise ValueError(f"{name}: deadline_s={deadline_s} must be a finite number > 0")

    def deadline_at(self) -> float:
        """The ``time.monotonic()`` instant a reward call starting now must end by."""
        return time.monotonic() + self.deadline_s

    def ask(self, prompts: Sequence[str], deadline_at: float | None = None) -> list[str]:
        """One reply per prompt, all by ``deadline_at`` (default: ``deadline_s`` from now). Completions send the
        prompts in one request; chat sends one request each, ``concurrency`` at a time."""
        prompts = list(prompts)
        if not prompts:
            return []
        deadline_at = self.deadline_at() if deadline_at is None else deadline_at
        try:
            if self.api == "completions":
                return self.client.completions(prompts, deadline_at=deadline_at, **self.knobs)
            messages = [[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": p}] for p in prompts]
            pool = concurrent.futures.ThreadPoolExecutor(min(self.concurrency, len(prompts)))
            try:
                futures = [pool.submit(self.client.chat, m, deadline_at=deadline_at, **self.knobs) for m in messages]
                return [f.result() for f in futures]
            finally:  # after a failure, the requests not yet sent are not sent
                pool.shutdown(wait=True, cancel_futures=True)
        except DeadlineExceeded as e:
            raise RewardError(f"{self.name}: the reward call's deadline_s={self.deadline_s:g} passed: {e}") from e
        except RemoteError as e:
            raise RewardError(f"{self.name}: {e}") from e


def _answer_text(output: str, operation: str) -> str:
    return prompts_lib.parse_answer(output, operation).text


class Judge(Protocol):
    """A judge's transport: :class:`RemoteJudge` (an OpenAI-compatible server) or
    :class:`synpro_jax.rl.rewards.judge_model.LocalJudge` (a model on the run's mesh, no server)."""

    def deadline_at(self) -> float | None: ...

    def ask(self, prompts: Sequence[str], deadline_at: float | None = None) -> list[str]: ...


class JudgeReward:
    """A judge reward over any :class:`Judge` transport: the prompts and the reply parsing live here, the way
    prompts reach a model and replies come back in the transport. ``max_tokens``: the reply budget a transport
    gets unless told otherwise (the same for both transports)."""

    name = "judge"
    max_tokens = 32

    def __init__(self, judge: Judge):
        self.judge = judge

    def _check(self, inputs: RewardInputs, operations: tuple[str, ...]) -> None:
        if inputs.operation not in operations:
            raise RewardError(f"{self.name} applies to {operations} outputs, not {inputs.operation!r}")


def _remote_judge(reward: type[JudgeReward], base_url: str, model: str | None, judge_kwargs: dict) -> RemoteJudge:
    judge_kwargs.setdefault("max_tokens", reward.max_tokens)
    return RemoteJudge(base_url, model, name=reward.name, **judge_kwargs)


class QualityJudgeReward(JudgeReward):
    """score(output) - score(source) on the judge's 1-5 scale; sources cached by text (``cache_size``)."""

    name = "quality_judge"
    max_tokens = 8

    def __init__(self, judge: Judge, cache_size: int = 4096):
        super().__init__(judge)
        self.cache_size = cache_size
        self._source_scores: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._lock = threading.Lock()

    def score(self, texts: Sequence[str], deadline_at: float | None = None) -> list[int]:
        replies = self.judge.ask([QUALITY_PROMPT.format(text=t) for t in texts], deadline_at)
        return [parse_quality_score(r) for r in replies]

    def source_scores(self, sources: Sequence[str], deadline_at: float | None = None) -> np.ndarray:
        return self._scores([], sources, deadline_at)[1]

    def _scores(
        self, texts: Sequence[str], sources: Sequence[str], deadline_at: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The scores of ``texts`` and of ``sources``, the sources not cached yet asked with the texts in one
        ``ask`` (one batch on the mesh, one completions request)."""
        with self._lock:
            missing = list(dict.fromkeys(s for s in sources if s not in self._source_scores))
        values = self.score([*texts, *missing], deadline_at)
        own, scores = values[: len(texts)], dict(zip(missing, values[len(texts) :]))
        with self._lock:
            for s, v in scores.items():
                self._source_scores[s] = v
            out = np.array([scores[s] if s in scores else self._source_scores[s] for s in sources], np.float32)
            while len(self._source_scores) > self.cache_size:
                self._source_scores.popitem(last=False)
        return np.asarray(own, np.float32).reshape(len(texts)), out

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        outputs = [_answer_text(c, inputs.operation) for c in inputs.completions]
        # one deadline, and one ask, for the outputs and the sources not cached yet
        own, base = self._scores(outputs, inputs.sources, self.judge.deadline_at())
        return own - base


@register_reward("quality_remote")
class QualityRemote(QualityJudgeReward):
    name = "quality_remote"

    def __init__(self, base_url: str, model: str | None = None, cache_size: int = 4096, **judge_kwargs):
        super().__init__(_remote_judge(type(self), base_url, model, judge_kwargs), cache_size)


class StructureJudgeReward(JudgeReward):
    """1 if the judge says the rephrase keeps the source's layout, else 0 (rephrase only)."""

    name = "structure_judge"
    max_tokens = 8

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        self._check(inputs, ("rephrase",))
        prompts = [
            STRUCTURE_PROMPT.format(original=s, rewritten=_answer_text(c, inputs.operation))
            for s, c in zip(inputs.sources, inputs.completions)
        ]
        return np.asarray([parse_structure_verdict(r) for r in self.judge.ask(prompts)], np.float32)


@register_reward("structure_remote")
class StructureRemote(StructureJudgeReward):
    name = "structure_remote"

    def __init__(self, base_url: str, model: str | None = None, **judge_kwargs):
        super().__init__(_remote_judge(type(self), base_url, model, judge_kwargs))


class FaithfulnessJudgeReward(JudgeReward):
    """Fraction of Topic/Content entries the verifier labels Faithful (reformat only); 0 with no entry."""

    name = "faithfulness_judge"
    max_tokens = 256

    @staticmethod
    def prompt(source: str, entries: Sequence[prompts_lib.Entry]) -> str:
        lines = "\n".join(f"{i + 1}. Topic: {e.topic} Content: {e.content}" for i, e in enumerate(entries))
        return FAITHFULNESS_PROMPT.format(source=source[:FAITHFULNESS_SOURCE_CHARS], entries=lines)

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        self._check(inputs, ("reformat",))
        entries = [prompts_lib.parse_entries(_answer_text(c, inputs.operation)) for c in inputs.completions]
        asked = [i for i, e in enumerate(entries) if e]
        out = np.zeros(len(inputs), np.float32)
        replies = self.judge.ask([self.prompt(inputs.sources[i], entries[i]) for i in asked])
        for i, reply in zip(asked, replies):
            labels = parse_faithfulness_labels(reply, len(entries[i]))
            out[i] = sum(label == "Faithful" for label in labels) / len(labels)
        return out


@register_reward("faithfulness_remote")
class FaithfulnessRemote(FaithfulnessJudgeReward):
    name = "faithfulness_remote"

    def __init__(self, base_url: str, model: str | None = None, **judge_kwargs):
        super().__init__(_remote_judge(type(self), base_url, model, judge_kwargs))


REMOTE_REWARDS: dict[str, Callable] = {
    "quality_remote": QualityRemote,
    "structure_remote": StructureRemote,
    "faithfulness_remote": FaithfulnessRemote,
}
