"""In-process judges (rl/rewards/judge_model.py) on a tiny random HF Qwen3 (tied embeddings) with a byte-level BPE
tokenizer.json, sharded on the 8-device CPU mesh: the exact prompt text (remote.py's prompt in Qwen3's chat
template), replies parsed as remote.py parses them (forced through a scripted decode; the random model's own
replies are errors, never a 0), one sampler call per reward call with replies in order and equal to judging the
prompts one by one, and one gin binding that swaps a server judge for the mesh with the same values."""

import copy
import dataclasses
import re
import socket
import threading
import time

import gin
import jax
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
import uvicorn

from synpro_jax import configs, sharding
from synpro_jax.errors import ConfigError
from synpro_jax.generation import prompts as prompts_lib
from synpro_jax.generation.sampler import SampleOutput
from synpro_jax.rl.rewards import RewardError, RewardInputs, build_suite, make_reward, remote
from synpro_jax.rl.rewards.judge_model import (
    JudgeConfig,
    JudgeModel,
    LocalJudge,
    judge_runtime,
    open_judges,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPHRASE = prompts_lib.HEADINGS["rephrase"]
REFORMAT = prompts_lib.HEADINGS["reformat"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CONTEXT = 1024
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"  # after the user turn


def chat(prompt: str, system: str = remote.JUDGE_SYSTEM, think: str = "<think>\n\n</think>\n\n") -> str:
    """Qwen3's chat template with enable_thinking=False, written out."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{think}"
    )


def rule(prompt: str) -> str:
    """What a trained judge would answer to one of remote.py's prompts, in the formats judges use."""
    said = re.search(r"JUDGE SAYS <<(.*?)>>", prompt, re.DOTALL)
    if said:
        return said.group(1)
    if "Overall Score (1-5)" in prompt:
        text = prompt.split("Text: ", 1)[1].rsplit("\nOverall Score", 1)[0]
        score = min(1 + text.count("good"), 5)
        return f"Overall Score: {score}" if "verbose" in text else str(score)
    if "Answer (0 or 1)" in prompt:
        original = prompt.split("Original:\n", 1)[1].split("\n\nRewritten:\n", 1)[0]
        rewritten = prompt.split("\n\nRewritten:\n", 1)[1].rsplit("\n\nAnswer", 1)[0]
        same = ("\n- " in original) == ("\n- " in rewritten)
        return "<think>Both hold a list, or neither does.</think>\nSame layout.\n1" if same else "0"
    if "Topic/Content entries" in prompt:
        source = prompt.split("Source:\n", 1)[1].split("\n\nEntries:\n", 1)[0]
        entries = prompt.split("\n\nEntries:\n", 1)[1].split("\n\nReply with", 1)[0].splitlines()
        lines = []
        for line in entries:
            num, topic, content = re.match(r"(\d+)\. Topic: (.*) Content: (.*)", line).groups()
            ok = topic.lower() in source.lower() and all(w in source.lower() for w in content.lower().split())
            lines.append(f"{num}. {'Faithful' if ok else 'Unfaithful_Content'}")
        return "\n".join(lines)
    return "?"


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny random Qwen3ForCausalLM (tied embeddings) saved by transformers, with a byte-level BPE tokenizer.json
    holding Qwen's ChatML special tokens and <think> tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [remote.JUDGE_SYSTEM, remote.QUALITY_PROMPT, remote.STRUCTURE_PROMPT, remote.FAITHFULNESS_PROMPT]
    texts += ["Rivers carry stones to the sea. Overall Score: 4\n1. Faithful\n2. Unfaithful_Topic good verbose"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens(["<think>", "</think>"])  # Qwen3's: added, not special (a reply keeps them)
    size = tok.get_vocab_size()
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=448,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        max_position_embeddings=CONTEXT,
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        bos_token_id=None,
    )
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("judge") / "qwen3_judge"
    model.save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    assert size <= config.vocab_size
    return path


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(sharding.MeshConfig(2, 2, 2))  # all 8 devices, every axis sharded


@pytest.fixture(scope="module")
def judge(judge_dir, mesh):
    return JudgeModel(JudgeConfig(str(judge_dir), max_prompt_tokens=512), mesh)


class ScriptedDecode:
    """Stands in for the sampler's decode only: it is handed the prompt token ids the judge built (recorded) and
    answers each with the tokens of ``reply(user prompt)`` and <|im_end|>, cut at the budget as the sampler
    cuts."""

    def __init__(self, model: JudgeModel, reply=rule):
        self.model, self.reply, self.calls = model, reply, []

    def generate(self, prompts, *, max_new_tokens, eos_id, pad_id, **knobs):
        self.calls.append({"prompts": [list(p) for p in prompts], "max_new_tokens": max_new_tokens, **knobs})
        tok, end = self.model.tokenizer, self.model.tokenizer.token_to_id("<|im_end|>")
        assert end in eos_id
        rows, finished = [], []
        for p in prompts:
            text = tok.decode(list(p), skip_special_tokens=False)
            user = text.split("<|im_start|>user\n", 1)[1].rsplit("<|im_end|>\n<|im_start|>assistant\n", 1)[0]
            ids = tok.encode(self.reply(user), add_special_tokens=False).ids + [end]
            finished.append(len(ids) <= max_new_tokens)
            rows.append(ids[:max_new_tokens])
        width = max(map(len, rows))
        tokens = np.full((len(rows), width), pad_id, np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
        lengths = np.array([len(r) for r in rows])
        return SampleOutput(tokens, lengths, np.zeros(tokens.shape, np.float32), np.array(finished))


def scripted(model: JudgeModel, reply=rule) -> JudgeModel:
    """The same judge (template, tokenizer, batching, stop ids) with the decode scripted."""
    out = copy.copy(model)
    out.sampler = ScriptedDecode(model, reply)
    return out


def rephrase(sources, outputs, group=None):
    return RewardInputs("rephrase", sources, outputs, np.asarray(range(len(outputs)) if group is None else group))


# (a) the prompt -----------------------------------------------------------------------------------------------------


def test_the_judge_reads_remote_prompts_in_qwen3s_chat_template(judge):
    prompt = remote.QUALITY_PROMPT.format(text="Rivers carry stones to the sea.")
    assert judge.render(prompt) == chat(prompt)
    stub = scripted(judge)
    reward = make_reward("quality_judge", judges={"quality": stub})
    reward(rephrase(["plain text"], [f"{REPHRASE} good text"]))
    (call,) = stub.sampler.calls
    sent = [judge.tokenizer.decode(p, skip_special_tokens=False) for p in call["prompts"]]
    assert sorted(sent) == sorted(chat(remote.QUALITY_PROMPT.format(text=t)) for t in ("good text", "plain text"))
    start = judge.tokenizer.token_to_id("<|im_start|>")
    assert call["prompts"][0][0] == start and call["prompts"][0].count(start) == 3  # one token each, no BOS
    assert call["temperature"] == 0.0 and call["seed"] == 1024  # remote.py's defaults: greedy
    # The other templates: ChatML alone (Qwen3 with thinking on), no system turn, OLMo-2's, the prompt as it is.
    assert prompts_lib.CHATML.render([{"role": "user", "content": "x"}]) == (
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    )
    bare = copy.copy(judge)
    bare.config = dataclasses.replace(judge.config, system=None)
    assert bare.render("x") == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    bare.template = None
    assert bare.render("x") == "x"


def test_stop_ids_and_pad_come_from_the_config_and_tokenizer(judge):
    tok = judge.tokenizer
    assert judge.stop_ids == sorted({tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")})
    assert judge.pad_id == tok.token_to_id("<|endoftext|>")


# (b) parsing --------------------------------------------------------------------------------------------------------


def test_forced_replies_are_parsed_as_remote_parses_them(judge):
    stub = scripted(judge)
    judges = {"quality": stub, "structure": stub, "faithfulness": stub}
    quality = make_reward("quality_judge", judges=judges)
    sources = ["plain text", "plain text", "a good verbose source"]
    outputs = [f"{REPHRASE} good good text", "no heading at all, good", f"{REPHRASE} good verbose good good"]
    np.testing.assert_array_equal(quality(rephrase(sources, outputs, [0, 0, 1])), [2.0, 0.0, 2.0])
    assert list(quality._source_scores) == ["plain text", "a good verbose source"]
    assert len(stub.sampler.calls[-1]["prompts"]) == 5  # 3 outputs and 2 sources, one call
    quality(rephrase(sources[:1], outputs[:1]))
    assert len(stub.sampler.calls[-1]["prompts"]) == 1  # the source is cached
    assert stub.sampler.calls[-1]["max_new_tokens"] == 8

    structure = make_reward("structure_judge", judges=judges)
    srcs = ["Intro\n- one\n- two", "Just prose here.", "Just prose."]
    outs = [f"{REPHRASE}\nIntro\n- uno\n- dos", f"{REPHRASE}\nList\n- a\n- b", f"{REPHRASE} Prose again."]
    with pytest.raises(RewardError, match="structure judge: the reply's <think> block is not closed"):
        structure(rephrase(srcs, outs))  # "<think>...</think>..." does not fit in 8 tokens
    structure = make_reward("structure_judge", judges=judges, max_tokens=64)
    np.testing.assert_array_equal(structure(rephrase(srcs, outs)), [1.0, 0.0, 1.0])

    faithfulness = make_reward("faithfulness_judge", judges=judges)
    source = "Rivers carry stones to the sea. Cats sleep under the green light."
    late = "Dogs sleep."
    entries = [
        f"{REFORMAT}\n- Topic: Rivers Content: rivers carry stones\n- Topic: Cats Content: cats sleep\n"
        f"- Topic: Cats Content: cats fly\n- Topic: Planets Content: planets spin",
        "no heading, no entries",
        f"{REFORMAT}\n- Topic: Dogs Content: dogs read maps",
        f"{REFORMAT}\n1. Topic: Rivers Content: rivers carry stones to the sea",
    ]
    inputs = RewardInputs("reformat", [source, source, late, source], entries, np.arange(4))
    np.testing.assert_allclose(faithfulness(inputs), [0.5, 0.0, 0.0, 1.0])
    assert len(stub.sampler.calls[-1]["prompts"]) == 3 and stub.sampler.calls[-1]["max_new_tokens"] == 256


@pytest.mark.parametrize(
    "reply, error",
    [
        ("I would rather not say.", "quality judge: no 1-5 overall score"),
        ("Error 500", "quality judge: no 1-5 overall score"),
        ("", "quality judge: no 1-5 overall score"),
    ],
)
def test_an_unparseable_forced_reply_is_an_error(judge, reply, error):
    reward = make_reward("quality_judge", judges={"quality": scripted(judge, lambda _: reply)})
    with pytest.raises(RewardError, match=error):
        reward(rephrase(["a source"], [f"{REPHRASE} an output"]))


def test_the_random_models_own_replies_are_errors_never_a_zero(judge):
    judges = {"quality": judge, "structure": judge, "faithfulness": judge}
    inputs = rephrase(["Intro\n- one\n- two", "Just prose here."], [f"{REPHRASE}\n- a\n- b", f"{REPHRASE} Prose."])
    replies = judge.generate([remote.QUALITY_PROMPT.format(text="Just prose here.")], max_tokens=8)
    assert replies[0] and "<|im_end|>" not in replies[0]  # text, the stop token left out
    with pytest.raises(RewardError, match="quality judge: no 1-5 overall score"):
        make_reward("quality_judge", judges=judges)(inputs)
    with pytest.raises(RewardError, match="structure judge"):
        make_reward("structure_judge", judges=judges)(inputs)
    suite = build_suite(_config({"structure": "structure_judge"}), judges=judges)
    with pytest.raises(RewardError, match="reward 'structure' failed and has no fallback: structure judge"):
        suite(inputs)


# (c) batching -------------------------------------------------------------------------------------------------------


def test_one_sampler_call_replies_in_order_as_one_by_one(judge):
    texts = ["Rivers carry stones.", "Cats sleep " * 30, "good", "A verbose text about the sea. " * 8, "x", "Maps."]
    prompts = [remote.QUALITY_PROMPT.format(text=t) for t in texts]
    calls = judge.calls
    together = judge.generate(prompts, max_tokens=8)
    assert judge.calls - calls == 1
    alone = [judge.generate([p], max_tokens=8)[0] for p in prompts]
    assert together == alone
    # Fewer rows per call: the shortest prompts together, the replies still in order.
    small = copy.copy(judge)
    small.config = dataclasses.replace(judge.config, batch_rows=4)
    calls = small.calls
    assert small.generate(prompts, max_tokens=8) == together and small.calls - calls == 2
    # The weights are sharded on all 8 devices.
    assert judge.sampler.mesh.devices.size == 8
    assert {d for leaf in jax.tree.leaves(judge.sampler.params) for d in leaf.devices()} == set(
        judge.sampler.mesh.devices.flat
    )


def test_a_too_long_prompt_is_an_error_naming_the_knob_or_loses_its_middle(judge):
    long_text = "Rivers carry stones to the sea. " * 200
    reward = make_reward("quality_judge", judges={"quality": scripted(judge)})
    with pytest.raises(RewardError, match=r"over JudgeConfig.max_prompt_tokens=512 .*too_long='cut'"):
        reward(rephrase(["short"], [f"{REPHRASE} {long_text}"]))
    cut = scripted(judge)
    cut.config = dataclasses.replace(judge.config, too_long="cut")
    (ids,) = cut.encode([remote.QUALITY_PROMPT.format(text=long_text)])
    assert len(ids) == 512
    text = judge.tokenizer.decode(ids, skip_special_tokens=False)
    head = f"<|im_start|>system\n{remote.JUDGE_SYSTEM}<|im_end|>\n<|im_start|>user\nRate the overall quality"
    assert text.startswith(head) and text.endswith("Overall Score (1-5):" + ASSISTANT)
    assert prompts_lib.CUT_MARKER in text


# (d) one gin binding swaps the transport ----------------------------------------------------------------------------


def _config(variants, options=None):
    from synpro_jax.rl.rewards import RewardsConfig

    return RewardsConfig("rephrase", {f: 1.0 for f in variants}, variants=variants, options=options or {})


@pytest.fixture(scope="module")
def server():
    """An OpenAI-compatible judge server (chat completions) answering by ``rule``."""

    async def chat_route(request: Request):
        body = await request.json()
        assert body["messages"][0] == {"role": "system", "content": remote.JUDGE_SYSTEM}
        reply = rule(body["messages"][-1]["content"])
        return JSONResponse({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]})

    app = Starlette(routes=[Route("/v1/chat/completions", chat_route, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "the judge server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    srv.should_exit = True
    thread.join(10)


GIN = """
synpro.RewardsConfig.operation = "rephrase"
synpro.RewardsConfig.weights = {"quality": 1.0, "structure": 2.0}
synpro.RewardsConfig.variants = {"quality": "quality_remote", "structure": "structure_remote"}
synpro.RewardsConfig.options = {
    "quality": {"base_url": %JUDGE_URL, "model": "rater", "timeout_s": 5.0},
    "structure": {"base_url": %JUDGE_URL, "model": "verifier", "max_tokens": 64},
}
synpro.grpo.judges = {"quality": @synpro.JudgeConfig(), "structure": @synpro.JudgeConfig()}
synpro.JudgeConfig.model_dir = %JUDGE_DIR
synpro.JudgeConfig.max_prompt_tokens = 512
"""
IN_PROCESS = 'synpro.RewardsConfig.variants = {"quality": "quality_judge", "structure": "structure_judge"}'


def _suite_from_gin(tmp_path, bindings, mesh):
    gin_file = tmp_path / "rewards.gin"
    gin_file.write_text(GIN)
    configs.parse([str(gin_file)], bindings)
    try:
        rewards = configs.build("RewardsConfig")
        job = configs.build("grpo", generator=None, prompts=None, run=None, rewards=rewards)
    finally:
        gin.clear_config()
    runtime, fingerprint = judge_runtime(rewards, job.judges, mesh)  # what synpro grpo does (rl/run.py)
    return build_suite(rewards, **runtime), fingerprint


def test_one_gin_binding_swaps_the_server_for_the_mesh(tmp_path, server, judge_dir, mesh):
    bindings = [f"JUDGE_URL = '{server}'", f"JUDGE_DIR = '{judge_dir}'"]
    remote_suite, fp = _suite_from_gin(tmp_path, bindings, mesh)
    assert fp == {} and type(remote_suite.rewards["quality"]).__name__ == "QualityRemote"
    local_suite, fp = _suite_from_gin(tmp_path, [*bindings, IN_PROCESS], mesh)
    quality, structure = local_suite.rewards["quality"], local_suite.rewards["structure"]
    assert isinstance(quality.judge, LocalJudge) and quality.judge.model is structure.judge.model  # loaded once
    assert (quality.judge.max_tokens, structure.judge.max_tokens) == (8, 64)  # the same options, both ways
    assert set(fp) == {"quality", "structure"} and fp["quality"]["max_prompt_tokens"] == 512
    quality.judge.model.sampler = ScriptedDecode(quality.judge.model)
    sources = ["Intro\n- one\n- two", "a good verbose source"]
    outputs = [f"{REPHRASE}\nIntro\n- good\n- dos", f"{REPHRASE}\ngood verbose good good"]
    inputs = rephrase(sources, outputs)
    got, want = local_suite(inputs), remote_suite(inputs)
    for name in ("quality", "structure"):
        np.testing.assert_array_equal(got.values[name], want.values[name])
    np.testing.assert_array_equal(got.total, want.total)
    np.testing.assert_array_equal(want.values["quality"], [1.0, 2.0])
    np.testing.assert_array_equal(want.values["structure"], [1.0, 1.0])


def test_remote_and_in_process_judges_mix_in_one_suite(judge):
    suite = build_suite(
        _config(
            {"quality": "quality_remote", "structure": "structure_judge"},
            {"quality": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        ),
        judges={"structure": judge},  # not handed to quality_remote, whose **kwargs go to the HTTP client
    )
    assert isinstance(suite.rewards["structure"].judge, LocalJudge)


# errors name the knob -----------------------------------------------------------------------------------------------


def test_bad_knobs_are_named(judge_dir, judge):
    for kwargs, match in [
        (dict(max_prompt_tokens=0), "JudgeConfig.max_prompt_tokens=0"),
        (dict(batch_rows=0), "JudgeConfig.batch_rows=0"),
        (dict(too_long="truncate"), "JudgeConfig.too_long='truncate'"),
        (dict(chat_template="qwen"), "JudgeConfig.chat_template='qwen'"),
        (dict(dtype="fp8"), "JudgeConfig.dtype='fp8'"),
        (dict(stop_tokens="<|im_end|>"), "JudgeConfig.stop_tokens"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(match)):
            JudgeConfig(str(judge_dir), **kwargs)
    with pytest.raises(ConfigError, match="JudgeConfig.model_dir=.*no config.json"):
        JudgeModel(JudgeConfig(str(judge_dir / "nope")))
    with pytest.raises(ConfigError, match=r"synpro.grpo.judges\['structure'\] is not set.*structure_judge"):
        open_judges({"quality": str(judge_dir)}, ["structure"])
    with pytest.raises(ConfigError, match=r"synpro.grpo.judges names \['qualty'\]"):
        open_judges({"qualty": str(judge_dir)}, [])
    with pytest.raises(
        ValueError, match=r"structure_judge needs its judge model: set synpro.grpo.judges\['structure'\]"
    ):
        make_reward("structure_judge", judges={"quality": judge})
    with pytest.raises(ValueError, match=r"max_prompt_tokens=512 \+ max_tokens=600 exceeds .* 1024 tokens"):
        make_reward("faithfulness_judge", judges={"faithfulness": judge}, max_tokens=600)
    with pytest.raises(ValueError, match=r"RewardsConfig.options\['quality'\]: quality_judge does not take"):
        build_suite(_config({"quality": "quality_judge"}, {"quality": {"model_dir": "x"}}), judges={"quality": judge})
    # the remote transport's options are accepted and unused (one binding switches)
    make_reward("quality_judge", judges={"quality": judge}, base_url="http://x", api="completions", timeout_s=1.0)


# synpro grpo with a judge on the mesh -------------------------------------------------------------------------------


@pytest.mark.slow
def test_synpro_grpo_judges_on_its_own_mesh(judge_dir, tmp_path):
    """The wiring in rl/run.py: the judge model is loaded on the run's mesh and judges every completion; the random
    judge's replies are failures, counted under the configured fallback, never a silent 0."""
    import json
    import os
    from pathlib import Path
    import subprocess
    import sys

    from grpo_job import MAX_PROMPT_TOKENS, make_workspace

    ws = make_workspace(tmp_path / "ws")
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    (tmp_path / "run.gin").write_text(f"""
include 'gin/runs/grpo.gin'
GENERATOR = "{ws["generator"]}"
PROMPTS = ["{ws["organic"]}"]
OUT_DIR = "{out}"
THETA = None
THETA_PRIME = None
PROMPTS_PER_STEP = 2
NUM_STEPS = 1
synpro.grpo.dtype = None
synpro.grpo.judges = {{"structure": @synpro.JudgeConfig()}}
synpro.JudgeConfig.model_dir = "{judge_dir}"
synpro.JudgeConfig.max_prompt_tokens = 512
synpro.RewardsConfig.operation = "rephrase"
synpro.RewardsConfig.weights = {{"format": 1.0, "structure": 1.0}}
synpro.RewardsConfig.variants = {{"structure": "structure_judge"}}
synpro.RewardsConfig.fallbacks = {{"structure": 0.0}}
synpro.GRPORunConfig.accum_steps = 1
synpro.GRPORunConfig.progress = False
synpro.GRPOConfig.num_generations = 4
synpro.GRPOConfig.max_prompt_tokens = {MAX_PROMPT_TOKENS}
synpro.GRPOConfig.max_completion_tokens = 16
""")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "synpro_jax.cli", "grpo", f"--gin_file={tmp_path / 'run.gin'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["reward_failures/structure"] == 8 and record["reward/structure_mean"] == 0.0
    assert re.search(r"reward structure failed \(structure[ _]judge", result.stderr)
