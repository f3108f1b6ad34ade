"""Judges on the mesh, no servers: the release's judge prompts and reply parsing (``remote.py``'s, reused as they
are) run on a judge model sharded on the GRPO run's mesh and decoded by the in-graph sampler.

Registered as ``quality_judge``, ``structure_judge`` and ``faithfulness_judge``. Each computes what its
``*_remote`` namesake computes (:class:`~synpro_jax.rl.rewards.remote.QualityJudgeReward` and its siblings: the
same prompts, parsers, source cache and reply budgets, 8 / 8 / 256 tokens; temperature 0, i.e. greedy, and seed
1024 unless told), through a :class:`LocalJudge` instead of a :class:`~synpro_jax.rl.rewards.remote.RemoteJudge`.
So one gin binding, the family's entry in ``synpro.RewardsConfig.variants``, switches a family between a server
and the mesh: the options a family gives its remote judge that only concern HTTP (``base_url``, ``api``,
timeouts, retries, ...) are accepted here and unused, and the shared ones (``max_tokens``, ``temperature``,
``seed``, ``cache_size``) mean the same.

The judge models are ``synpro.grpo.judges``: family -> :class:`JudgeConfig` (or just an HF directory), read only
for the families whose variant is an in-process judge. A :class:`JudgeModel` is an HF ``Olmo2ForCausalLM`` or
``Qwen3ForCausalLM`` directory (``models.hf.load``: a Qwen3 verifier, a DataMan-style rater exported to one of
these) with its ``tokenizer.json`` and a chat template, placed on the run's mesh by a
:class:`~synpro_jax.generation.sampler.Sampler`. A reward call's prompts go through the chat template (the system
turn is remote.py's ``JUDGE_SYSTEM``, as its chat requests send it), are tokenized, and are decoded in one
bucketed sampler call (``batch_rows`` rows at most per call, the shortest prompts together), each reply stopping
at an end token (``config.json``'s and ``generation_config.json``'s eos ids, ``<|im_end|>``, ``<|endoftext|>``).
Families bound to equal configs share one model (the Qwen3 verifier judging structure and faithfulness is loaded
once).

A prompt longer than ``max_prompt_tokens`` raises :class:`RewardError` naming the knob (``too_long="error"``,
the default), or loses its middle tokens to ``" ... "`` (``too_long="cut"``: the instructions at its head and
the answer cue and assistant turn at its tail stay). An unparseable reply raises, as from a server; never a 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import hashlib
import inspect
import json
import logging
import os
from typing import Any

from etils.epath import Path
import jax
import numpy as np
from tokenizers import Tokenizer

from synpro_jax import atomic
from synpro_jax.errors import ConfigError
from synpro_jax.generation import prompts as prompts_lib
from synpro_jax.generation.sampler import Sampler
from synpro_jax.models import hf
from synpro_jax.models.config import DTYPES
from synpro_jax.rl.rewards.base import RewardError, register_reward
from synpro_jax.rl.rewards.remote import (
    JUDGE_SYSTEM,
    FaithfulnessJudgeReward,
    JudgeReward,
    QualityJudgeReward,
    RemoteJudge,
    StructureJudgeReward,
)

log = logging.getLogger(__name__)

TEMPLATES = {
    "qwen3": prompts_lib.QWEN3_CHAT,  # ChatML with the empty <think> block: Qwen3 with thinking off
    "chatml": prompts_lib.CHATML,  # ChatML alone (Qwen3 with thinking on: raise max_tokens for the <think> block)
    "olmo2": prompts_lib.OLMO2_CHAT,
    "none": None,  # the prompt as it is, as remote.py's api="completions" sends it
}
DEFAULT_TEMPLATES = {"qwen3": "qwen3", "olmo2": "olmo2"}  # by ModelConfig.architecture
TOO_LONG = ("error", "cut")
# Reward variant -> the family whose judge model it uses.
JUDGE_VARIANTS = {"quality_judge": "quality", "structure_judge": "structure", "faithfulness_judge": "faithfulness"}
JUDGE_FAMILIES = tuple(JUDGE_VARIANTS.values())
# RemoteJudge's options that only concern HTTP: accepted and unused in process (one binding switches transports).
REMOTE_ONLY_OPTIONS = frozenset(inspect.signature(RemoteJudge.__init__).parameters) - {
    "self",
    "max_tokens",
    "temperature",
    "seed",
    "name",
}


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """An in-process judge (gin: ``@synpro.JudgeConfig()``, in ``synpro.grpo.judges``).

    ``model_dir``: an HF Olmo2ForCausalLM or Qwen3ForCausalLM directory. ``tokenizer``: its tokenizer.json
    (default: the one in model_dir). ``dtype``: the compute dtype (None: the model config's; "bfloat16" halves
    the weights the sampler reads). ``chat_template``: "qwen3", "chatml", "olmo2" or "none" (None: by
    architecture, qwen3 or olmo2). ``system``: the system turn (default remote.py's JUDGE_SYSTEM; None: no system
    turn). ``max_prompt_tokens``: the longest prompt, chat template included; a longer one is an error
    (``too_long="error"``) or loses its middle (``"cut"``). ``batch_rows``: prompts per sampler call (a reward
    call with more makes several). ``stop_tokens``: tokens that end a reply besides the config's eos ids (those
    the tokenizer lacks are skipped)."""

    model_dir: str
    tokenizer: str | None = None
    dtype: str | None = None
    chat_template: str | None = None
    system: str | None = JUDGE_SYSTEM
    max_prompt_tokens: int = 8192
    too_long: str = "error"
    batch_rows: int = 64
    stop_tokens: Sequence[str] = ("<|im_end|>", "<|endoftext|>")

    def __post_init__(self):
        for knob in ("model_dir", "tokenizer"):  # paths as text, so equal configs compare (and fingerprint) equal
            if isinstance(getattr(self, knob), os.PathLike):
                object.__setattr__(self, knob, os.fspath(getattr(self, knob)))
        if not self.model_dir or not isinstance(self.model_dir, str):
            raise ConfigError(f"JudgeConfig.model_dir={self.model_dir!r}: give the judge's HF directory")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"JudgeConfig.dtype={self.dtype!r}: one of {sorted(DTYPES)} or None")
        if self.chat_template is not None and self.chat_template not in TEMPLATES:
            raise ConfigError(
                f"JudgeConfig.chat_template={self.chat_template!r}: one of {sorted(TEMPLATES)} or None (by "
                "architecture)"
            )
        if self.system is not None and not isinstance(self.system, str):
            raise ConfigError(f"JudgeConfig.system={self.system!r}: the system turn's text, or None for none")
        if self.too_long not in TOO_LONG:
            raise ConfigError(f"JudgeConfig.too_long={self.too_long!r}: one of {TOO_LONG}")
        for knob, least in (("max_prompt_tokens", 16), ("batch_rows", 1)):
            v = getattr(self, knob)
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ConfigError(f"JudgeConfig.{knob}={v!r}: must be an integer >= {least}")
        if isinstance(self.stop_tokens, str) or not all(isinstance(t, str) and t for t in self.stop_tokens):
            raise ConfigError(f"JudgeConfig.stop_tokens={self.stop_tokens!r}: a list of token strings")
        object.__setattr__(self, "stop_tokens", tuple(self.stop_tokens))


def as_judge_config(spec: Any, knob: str) -> JudgeConfig:
    """A JudgeConfig from a JudgeConfig or an HF directory (str or path)."""
    if isinstance(spec, JudgeConfig):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return JudgeConfig(model_dir=os.fspath(spec))
    raise ConfigError(f"{knob}={spec!r}: a JudgeConfig (@synpro.JudgeConfig()) or the judge's HF directory")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


class JudgeModel:
    """A judge model on a mesh: the weights placed by a Sampler, the tokenizer and the chat template.
    :meth:`generate` turns judge prompts (text) into replies (text) in bucketed sampler calls."""

    def __init__(self, config: JudgeConfig, mesh=None):
        self.config = config
        path = Path(config.model_dir)
        if not (path / "config.json").exists():
            raise ConfigError(f"JudgeConfig.model_dir={config.model_dir}: no config.json there (an HF directory?)")
        cfg, params = hf.load(path)
        if config.dtype is not None:
            cfg = cfg.replace(dtype=config.dtype)
        tok_path = Path(config.tokenizer) if config.tokenizer else path / "tokenizer.json"
        if tok_path.is_dir():
            tok_path = tok_path / "tokenizer.json"
        if not tok_path.is_file():
            raise ConfigError(f"JudgeConfig.tokenizer: {tok_path} does not exist (the judge's tokenizer.json)")
        text = tok_path.read_text(encoding="utf-8")
        try:
            self.tokenizer = Tokenizer.from_str(text)
        except Exception as e:  # the tokenizers library raises a bare Exception on bad files
            raise ConfigError(f"JudgeConfig.tokenizer: {tok_path} is not a Hugging Face tokenizer.json ({e})") from None
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if size > cfg.vocab_size:
            raise ConfigError(
                f"JudgeConfig.tokenizer: {tok_path} has {size} tokens but {path}'s vocab_size is {cfg.vocab_size}"
            )
        name = config.chat_template or DEFAULT_TEMPLATES[cfg.architecture]
        self.template = TEMPLATES[name]
        if name in ("qwen3", "chatml"):
            missing = [t for t in ("<|im_start|>", "<|im_end|>") if self.tokenizer.token_to_id(t) is None]
            if missing:
                raise ConfigError(
                    f"JudgeConfig.chat_template={name!r}: {tok_path} has no {missing[0]} token (a ChatML model's)"
                )
        hf_config = _read_json(path / "config.json")
        generation = _read_json(path / "generation_config.json")
        stops = _ids(hf_config.get("eos_token_id")) + _ids(generation.get("eos_token_id"))
        stops += [i for i in map(self.tokenizer.token_to_id, config.stop_tokens) if i is not None]
        self.stop_ids = sorted({i for i in stops if 0 <= i < cfg.vocab_size})
        if not self.stop_ids:
            raise ConfigError(
                f"JudgeConfig.stop_tokens={list(config.stop_tokens)}: none is in {tok_path} and {path} names no "
                "eos_token_id, so a reply would never end"
            )
        pad = hf_config.get("pad_token_id")
        self.pad_id = int(pad) if isinstance(pad, int) and 0 <= pad < cfg.vocab_size else self.stop_ids[0]
        self.marker = self.tokenizer.encode(prompts_lib.CUT_MARKER, add_special_tokens=False).ids
        digest = hashlib.sha256(text.encode())
        for leaf in jax.tree.leaves(params):  # the first values of every tensor, exact bytes
            digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32).reshape(-1)[:4096]).tobytes())
        self.identity = {
            "model_dir": atomic.canonical_name(path),
            "weights_and_tokenizer": digest.hexdigest(),
            **json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        }
        self.cfg = cfg
        self.sampler = Sampler(cfg, params, mesh=mesh)
        self.calls = 0  # sampler calls so far

    def render(self, prompt: str) -> str:
        """The text the model reads for one judge prompt: the chat template's system and user turns and the
        opened assistant turn (the prompt as it is under chat_template="none")."""
        if self.template is None:
            return prompt
        system = [{"role": "system", "content": self.config.system}] if self.config.system is not None else []
        return self.template.render([*system, {"role": "user", "content": prompt}])

    def encode(self, prompts: Sequence[str], name: str = "judge") -> list[list[int]]:
        """Token ids of each rendered prompt, cut or refused beyond max_prompt_tokens."""
        encoded = self.tokenizer.encode_batch([self.render(p) for p in prompts], add_special_tokens=False)
        limit, out = self.config.max_prompt_tokens, []
        for i, enc in enumerate(encoded):
            ids = list(enc.ids)
            if len(ids) > limit:
                if self.config.too_long == "error":
                    raise RewardError(
                        f"{name}: judge prompt {i} has {len(ids)} tokens, over JudgeConfig.max_prompt_tokens={limit} "
                        "(raise it, or set JudgeConfig.too_long='cut' to cut the prompt's middle)"
                    )
                keep = limit - len(self.marker)
                head = (keep + 1) // 2
                ids = ids[:head] + self.marker + ids[len(ids) - (keep - head) :]
            out.append(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        name: str = "judge",
    ) -> list[str]:
        """One reply per prompt, in order: all the prompts in one sampler call (``batch_rows`` at most per call,
        by length), each reply ending before its stop token or at ``max_tokens``."""
        prompts = list(prompts)
        if not prompts:
            return []
        ids = self.encode(prompts, name)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        replies: list[str] = [""] * len(ids)
        rows = self.config.batch_rows
        for start in range(0, len(order), rows):
            chunk = order[start : start + rows]
            out = self.sampler.generate(
                [ids[i] for i in chunk],
                max_new_tokens=max_tokens,
                temperature=temperature,
                seed=0 if seed is None else seed,
                eos_id=self.stop_ids,
                pad_id=self.pad_id,
                stream_ids=chunk,  # a prompt's stream is its place in the call, whatever the chunking
            )
            self.calls += 1
            for i, tokens, n, finished in zip(chunk, out.tokens, out.lengths, out.finished):
                tokens = tokens[: int(n)]
                replies[i] = self.decode(tokens[:-1] if finished and len(tokens) else tokens)
        return replies


class LocalJudge:
    """The in-process transport (remote.py's :class:`~synpro_jax.rl.rewards.remote.Judge`): prompts to a
    :class:`JudgeModel` with one reward's reply budget, temperature and seed. No deadline: nothing to wait on."""

    def __init__(self, model: JudgeModel, *, max_tokens: int, temperature: float = 0.0, seed: int | None = 1024,
                 name: str = "judge"):  # fmt: skip
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"{name}: max_tokens={max_tokens!r} must be an integer >= 1")
        if not (temperature >= 0 and np.isfinite(temperature)):
            raise ValueError(f"{name}: temperature={temperature!r} must be >= 0 (0 = greedy)")
        limit = model.config.max_prompt_tokens + max_tokens
        if limit > model.cfg.max_seq_len:
            raise ValueError(
                f"{name}: JudgeConfig.max_prompt_tokens={model.config.max_prompt_tokens} + max_tokens={max_tokens} "
                f"exceeds {model.config.model_dir}'s context of {model.cfg.max_seq_len} tokens"
            )
        self.model, self.name = model, name
        self.max_tokens, self.temperature, self.seed = max_tokens, float(temperature), seed

    def deadline_at(self) -> None:
        return None

    def ask(self, prompts: Sequence[str], deadline_at: float | None = None) -> list[str]:
        del deadline_at  # in process: a call ends when the sampler does
        return self.model.generate(
            prompts, max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed, name=self.name
        )


def _local_judge(
    reward: type[JudgeReward],
    judges: Mapping[str, JudgeModel] | None,
    max_tokens: int | None,
    temperature: float,
    seed: int | None,
    remote_options: Mapping[str, Any],
) -> LocalJudge:
    unknown = sorted(set(remote_options) - REMOTE_ONLY_OPTIONS)
    if unknown:
        raise TypeError(f"{reward.name}() got unexpected options {unknown}")
    if remote_options:
        log.info(
            "%s runs in process: the remote transport's options %s are unused", reward.name, sorted(remote_options)
        )
    family = JUDGE_VARIANTS[reward.name]
    model = (judges or {}).get(family)
    if model is None:
        raise ValueError(
            f"{reward.name} needs its judge model: set synpro.grpo.judges[{family!r}] (a JudgeConfig or the judge's "
            "HF directory)"
        )
    return LocalJudge(
        model,
        max_tokens=reward.max_tokens if max_tokens is None else max_tokens,
        temperature=temperature,
        seed=seed,
        name=reward.name,
    )


class _InProcess:
    """The in-process variants' one constructor: the judge model by family from ``judges`` (build_suite passes
    it to factories that name it), the shared judge options, and the remote transport's options accepted and
    unused; ``own_options`` go on to the judging class itself."""

    own_options: tuple[str, ...] = ()

    def __init__(
        self,
        judges: Mapping[str, JudgeModel] | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int | None = 1024,
        **options,
    ):
        own = {k: options.pop(k) for k in self.own_options if k in options}
        super().__init__(_local_judge(type(self), judges, max_tokens, temperature, seed, options), **own)


@register_reward("quality_judge")
class QualityJudge(_InProcess, QualityJudgeReward):
    name = "quality_judge"
    own_options = ("cache_size",)  # sources scored once per distinct text, up to this many


@register_reward("structure_judge")
class StructureJudge(_InProcess, StructureJudgeReward):
    name = "structure_judge"


@register_reward("faithfulness_judge")
class FaithfulnessJudge(_InProcess, FaithfulnessJudgeReward):
    name = "faithfulness_judge"


def judge_families(rewards) -> list[str]:
    """The families whose judge model a RewardsConfig's in-process judge variants need, in order."""
    needed = [JUDGE_VARIANTS[rewards.variant(f)] for f in rewards.weights if rewards.variant(f) in JUDGE_VARIANTS]
    return list(dict.fromkeys(needed))


def open_judges(
    judges: Mapping[str, Any], families: Iterable[str], mesh=None, knob: str = "synpro.grpo.judges"
) -> dict[str, JudgeModel]:
    """The judge model of each of ``families`` on ``mesh``, from ``judges`` (family -> JudgeConfig or HF
    directory); families bound to equal configs share one model. Entries for other families are not loaded."""
    judges = dict(judges or {})
    unknown = sorted(set(judges) - set(JUDGE_FAMILIES))
    if unknown:
        raise ConfigError(f"{knob} names {unknown}: judge families are {list(JUDGE_FAMILIES)}")
    out: dict[str, JudgeModel] = {}
    loaded: dict[JudgeConfig, JudgeModel] = {}
    for family in families:
        if family not in judges:
            variant = next(v for v, f in JUDGE_VARIANTS.items() if f == family)
            raise ConfigError(
                f"{knob}[{family!r}] is not set, but a reward family is judged by {variant} in process: give it a "
                "JudgeConfig or the judge's HF directory"
            )
        config = as_judge_config(judges[family], f"{knob}[{family!r}]")
        if config not in loaded:
            loaded[config] = JudgeModel(config, mesh)
        out[family] = loaded[config]
    return out


def judge_runtime(rewards, judges: Mapping[str, Any], mesh=None, knob: str = "synpro.grpo.judges") -> tuple[dict, dict]:
    """What ``build_suite`` needs for a RewardsConfig's in-process judges, ``{"judges": {family: JudgeModel}}``
    (empty when no family uses one), and their fingerprint (family -> model directory, a digest of its weights
    and tokenizer, and the JudgeConfig)."""
    families = judge_families(rewards)
    if not families:
        return {}, {}
    models = open_judges(judges, families, mesh, knob)
    return {"judges": models}, {f: m.identity for f, m in models.items()}
