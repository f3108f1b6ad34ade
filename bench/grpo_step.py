"""Time per GRPO step, split into rollout, reference log-probs, rewards and update: synpro_jax against TRL's
``GRPOTrainer`` (torch, no vLLM) and, in a separate venv, tunix's ``GRPOLearner`` (see ``bench/peers/``).

Same setting on every side: one random model exported with ``synpro_jax.models.hf.save`` (transformers loads the
directory as Olmo2ForCausalLM, so TRL runs the identical weights), a local word-level tokenizer (one word per id,
no hub download), ``--prompts`` prompts of exactly ``--prompt_len`` tokens per step, G = ``--num_generations``
completions each of exactly ``--completion_len`` tokens (no EOS is ever sampled: ours has no stop id, TRL gets
``min_new_tokens`` = max_new_tokens), temperature 1.0, top-p 0.9, beta 0.005 (k3 KL against a frozen reference,
times the importance ratio on both sides: ``GRPOConfig.kl_bias_correction`` = TRL's ``use_bias_correction_kl``),
token-mean loss, one optimizer step per rollout batch (no accumulation, num_iterations 1), AdamW lr 1e-6. The
rewards are the same Python code on both sides: synpro_jax's ``format`` + ``length`` RewardSuite on the decoded text.

Activation recomputation is matched pair by pair (``--pairs``): TRL 1.16 turns ``gradient_checkpointing`` on by
default, ours has none unless the model config asks for it, so the bench times

- ``no_remat``: TRL with ``gradient_checkpointing=False`` against ours with ``ModelConfig.remat="none"``;
- ``remat``: TRL with ``gradient_checkpointing=True`` (its default) against ours with ``remat="full"``.

Only the update phase recomputes (TRL turns checkpointing off for generation and the reference pass). The runs are
interleaved (ours, TRL, ours, TRL) and the load average is recorded around each, since CPU numbers are only
comparable on an otherwise idle machine.

Phases of one step (median over ``--steps`` timed steps after ``--warmup`` untimed ones, which compile):

- rollout: prompts -> completion ids and decoded texts. Ours: ``Sampler.rollout`` (block_until_ready) plus
  ``RolloutBatch.texts``. TRL: ``GRPOTrainer._generate`` (prompt tokenization, ``model.generate``, decoding).
- ref_logprobs: log-probs of the completions under the frozen reference. Ours: ``GRPOStep.ref_logprobs``. TRL: every
  ``_get_per_token_logps_and_entropies`` call made with autograd off (with these settings only the reference pass:
  no old-policy pass is needed when generation and optimizer steps are aligned).
- rewards: the reward functions only. Ours: ``RewardSuite`` on the texts. TRL: ``GRPOTrainer._calculate_rewards``.
- update: the rest of the step, total minus the three above. Ours: advantages, the jitted GRPO update
  (``GRPOStep.__call__``, block_until_ready) and ``Sampler.update_params``. TRL: advantages, padding/bookkeeping in
  ``_generate_and_score_completions``, the loss forward + backward, grad clipping, ``optimizer.step`` and the LR
  scheduler.
- total: wall time of the whole step. Ours: around the loop body. TRL: from the ``on_step_begin`` to the
  ``on_step_end`` trainer callback (the rollout happens inside, in ``_prepare_inputs``).

Tokens/s: rollout = rows * completion_len / rollout time; update = rows * (prompt_len + completion_len) / update
time. Ratios are TRL time / our time (so > 1 means we are faster), per phase and total.

    python bench/grpo_step.py --peers trl                             # CPU, writes bench/results/grpo_step.json
    # on a shared CPU box: one core and one thread per side (torch's spinning thread pool slows 5-15x, erratically,
    # when another process holds one of two cores; XLA's barely)
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" taskset -c 1 \
        python bench/grpo_step.py --peers trl --threads 1
    python bench/grpo_step.py --torch_device cuda --peers trl --out bench/results/grpo_step_h100.json   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
import tempfile
import time

# JAX and torch share the GPU in this one process: JAX must not reserve 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

from synpro_jax import models, sharding  # noqa: E402
from synpro_jax.generation import Sampler  # noqa: E402
from synpro_jax.models import hf  # noqa: E402
from synpro_jax.rl import grpo  # noqa: E402
from synpro_jax.rl.config import GRPOConfig  # noqa: E402
from synpro_jax.rl.learner import GRPOStep  # noqa: E402
from synpro_jax.rl.rewards import RewardInputs, RewardSuite, make_reward  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "grpo_step.json"
PHASES = ("rollout", "ref_logprobs", "rewards", "update", "total")
PAD, EOS, UNK = 0, 1, 2  # special ids of the bench tokenizer; prompts use ids >= 3
DEFAULT_TUNIX_PYTHON = "/work/venv_tunix/bin/python"


# --- shared setting ----------------------------------------------------------------------------------------------


def word(i: int) -> str:
    return f"w{i}"


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer with one word per model id ("w17" <-> 17), so a prompt of n words is n tokens."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK, **{word(i): i for i in range(3, vocab_size)}}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def make_prompts(vocab_size: int, count: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab_size, size=(count, length)).tolist()


def export_model(cfg, out_dir: Path) -> None:
    """The random model as an HF directory; EOS/pad set to the bench tokenizer's ids for transformers."""
    hf.save(cfg, jax.device_get(models.init_params(cfg, jax.random.key(0))), out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    config.update(eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    gen = out_dir / "generation_config.json"
    if gen.exists():
        gen.unlink()


def make_scorer(num_generations: int):
    """format + length (weights 1, 1) on decoded text: one Python reward used unchanged by every side."""
    suite = RewardSuite(
        {"format": make_reward("format"), "length": make_reward("length")}, {"format": 1.0, "length": 1.0}
    )

    def score(sources, completions) -> np.ndarray:
        group = np.arange(len(completions)) // num_generations
        return suite(RewardInputs("rephrase", list(sources), list(completions), group)).total

    return score


def summarize(per_step: dict[str, list[float]], rows: int, prompt_len: int, completion_len: int) -> dict:
    ms = {k: 1e3 * float(np.median(v)) for k, v in per_step.items()}
    return {
        "ms_per_step": ms,
        "ms_per_step_all": {k: [round(1e3 * x, 3) for x in v] for k, v in per_step.items()},
        "rollout_tokens_per_s": rows * completion_len / (ms["rollout"] / 1e3),
        "update_tokens_per_s": rows * (prompt_len + completion_len) / (ms["update"] / 1e3),
    }


# --- synpro_jax ---------------------------------------------------------------------------------------------------


def run_ours(cfg, model_dir: Path, tokenizer, prompt_steps, args, remat: str = "none") -> dict:
    loaded_cfg, params = hf.load(model_dir)
    cfg = loaded_cfg.replace(name=cfg.name, dtype=args.dtype, scan_unroll=cfg.scan_unroll, remat=remat)
    mesh = sharding.single_device_mesh()
    g, c = args.num_generations, args.completion_len
    total_steps = args.warmup + args.steps
    grpo_cfg = GRPOConfig(num_generations=g, beta=0.005, max_completion_tokens=c)
    learner = GRPOStep(cfg, mesh, grpo_cfg, total_steps=total_steps, prompt_group=g)  # as GRPOTrainer runs it
    sampler = Sampler(cfg, params, mesh=mesh)
    state = learner.init(jax.random.key(1), params)
    ref = learner.copy_params(state.params)
    score = make_scorer(g)
    decode = tokenizer.decode
    per_step = {k: [] for k in PHASES}
    for step in range(total_steps):
        prompts = prompt_steps[step]
        sources = [tokenizer.decode(p) for p in prompts for _ in range(g)]
        t0 = time.perf_counter()
        rollout = sampler.rollout(
            prompts,
            num_generations=g,
            max_new_tokens=c,
            temperature=grpo_cfg.temperature,
            top_p=grpo_cfg.top_p,
            seed=step,
            eos_id=None,
            pad_id=PAD,
        )
        jax.block_until_ready(rollout)
        texts = rollout.texts(decode)
        t1 = time.perf_counter()
        batch = {
            "tokens": rollout.tokens,
            "positions": rollout.positions,
            "segment_ids": rollout.segment_ids,
            "completion_mask": rollout.completion_mask,
        }
        batch["ref_logp"] = jax.block_until_ready(learner.ref_logprobs(ref, batch))
        t2 = time.perf_counter()
        rewards = score(sources, texts)
        t3 = time.perf_counter()
        batch["advantages"] = grpo.compute_advantages(rewards, grpo_cfg)
        state, metrics = learner(state, batch)
        jax.block_until_ready((state, metrics))
        sampler.update_params(state.params)
        jax.block_until_ready(sampler.params)
        t4 = time.perf_counter()
        if step >= args.warmup:
            for k, v in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                per_step[k].append(v)
        assert rollout.tokens.shape[1] == args.prompt_len + c, rollout.tokens.shape  # no extra prompt padding
        assert int(np.min(jax.device_get(rollout.lengths))) == c
    out = summarize(per_step, len(prompts) * g, args.prompt_len, c)
    out.update(
        system="synpro_jax",
        jax=jax.__version__,
        device=str(jax.devices()[0]),
        backend=jax.default_backend(),
        model="OLMo-2 (synpro_jax), the exported weights",
        remat=cfg.remat,
        kl_bias_correction=grpo_cfg.kl_bias_correction,
        last_loss=float(metrics["loss"]) if "loss" in metrics else None,
    )
    return out


# --- TRL ----------------------------------------------------------------------------------------------------------


class _PhaseClock:
    """Accumulates wall time per phase inside one trainer step; the callback closes the step."""

    def __init__(self, sync):
        self.sync, self.current, self.steps = sync, {}, []

    def timed(self, phase, fn):
        def wrapper(*a, **k):
            self.sync()
            t = time.perf_counter()
            out = fn(*a, **k)
            self.sync()
            self.current[phase] = self.current.get(phase, 0.0) + time.perf_counter() - t
            return out

        return wrapper


def run_trl(model_dir: Path, tokenizer, prompt_steps, args, gradient_checkpointing: bool = True) -> dict:
    import datasets
    import torch
    import transformers
    import trl

    device = args.torch_device
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    clock = _PhaseClock(sync)
    g, c = args.num_generations, args.completion_len
    total_steps = args.warmup + args.steps
    n = len(prompt_steps[0])
    score = make_scorer(g)

    def synpro_rewards(prompts, completions, **_):
        return score(prompts, completions).tolist()

    class StepClock(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            sync()
            clock.current = {}
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            clock.current["total"] = time.perf_counter() - self.t
            clock.steps.append(clock.current)

    # The prompts of the whole run (TRL's RepeatSampler shuffles them; all have prompt_len tokens).
    texts = [tokenizer.decode(p) for step in prompt_steps for p in step]
    data = datasets.Dataset.from_dict({"prompt": texts})
    with tempfile.TemporaryDirectory() as out_dir:
        config = trl.GRPOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=n * g,
            gradient_accumulation_steps=1,
            num_generations=g,
            max_completion_length=c,
            temperature=1.0,
            top_p=0.9,
            top_k=0,
            beta=0.005,
            learning_rate=1e-6,
            lr_scheduler_type="cosine",
            warmup_steps=0.1,
            max_steps=total_steps,
            logging_steps=10**6,
            save_strategy="no",
            report_to="none",
            use_cpu=device == "cpu",
            bf16=args.dtype == "bfloat16",
            fp16=False,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
            generation_kwargs={"min_new_tokens": c},  # every completion runs to max length, as on our side
            gradient_checkpointing=gradient_checkpointing,
            use_bias_correction_kl=GRPOConfig().kl_bias_correction,  # spelled out: ours follows TRL 1.16's default
        )
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = trl.GRPOTrainer(
            model=model,
            reward_funcs=[synpro_rewards],
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        trainer._generate = clock.timed("rollout", trainer._generate)
        trainer._calculate_rewards = clock.timed("rewards", trainer._calculate_rewards)
        logps = trainer._get_per_token_logps_and_entropies
        timed_logps = clock.timed("ref_logprobs", logps)
        trainer._get_per_token_logps_and_entropies = lambda *a, **k: (
            logps(*a, **k) if torch.is_grad_enabled() else timed_logps(*a, **k)
        )
        prompt_lens = []
        tokenize = trainer._tokenize_prompts

        def check_tokenize(prompts):
            out = tokenize(prompts)
            prompt_lens.extend(len(p) for p in out[0])
            return out

        trainer._tokenize_prompts = check_tokenize
        trainer.train()
        param = next(trainer.model.parameters())
    if set(prompt_lens) != {args.prompt_len}:
        raise RuntimeError(f"TRL tokenized prompts to lengths {sorted(set(prompt_lens))}, not {args.prompt_len}")
    timed = clock.steps[args.warmup :]
    per_step = {k: [s.get(k, 0.0) for s in timed] for k in PHASES if k != "update"}
    per_step["update"] = [
        s["total"] - s.get("rollout", 0) - s.get("ref_logprobs", 0) - s.get("rewards", 0) for s in timed
    ]
    out = summarize(per_step, n * g, args.prompt_len, c)
    out.update(
        system="trl",
        trl=trl.__version__,
        transformers=transformers.__version__,
        torch=torch.__version__,
        device=str(param.device),
        model="Olmo2ForCausalLM from the same export (identical weights)",
        torch_threads=torch.get_num_threads(),
        gradient_checkpointing=config.gradient_checkpointing,
        use_bias_correction_kl=config.use_bias_correction_kl,
    )
    return out


# --- tunix (subprocess in its own venv) ---------------------------------------------------------------------------


def run_tunix(model_dir: Path, prompt_steps, args) -> dict:
    python = args.tunix_python
    if not Path(python).exists():
        return {
            "system": "tunix",
            "skipped": f"no tunix interpreter at {python} (--tunix_python); install with "
            "`python -m venv /work/venv_tunix && /work/venv_tunix/bin/pip install "
            "google-tunix`",
        }
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        result = Path(tmp) / "result.json"
        spec.write_text(
            json.dumps(
                {
                    "model_dir": str(model_dir),
                    "prompt_steps": prompt_steps,
                    "num_generations": args.num_generations,
                    "prompt_len": args.prompt_len,
                    "completion_len": args.completion_len,
                    "warmup": args.warmup,
                    "steps": args.steps,
                    "dtype": args.dtype,
                    "repo": str(HERE.parent),
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        try:
            proc = subprocess.run(
                [python, str(HERE / "peers" / "tunix_grpo.py"), str(spec), str(result)],
                capture_output=True,
                text=True,
                env=env,
                timeout=args.tunix_timeout,
            )
        except subprocess.TimeoutExpired:
            return {"system": "tunix", "error": f"timed out after {args.tunix_timeout} s (--tunix_timeout)"}
        if proc.returncode != 0 or not result.exists():
            return {"system": "tunix", "error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
        out = json.loads(result.read_text())
    return out


# --- main ---------------------------------------------------------------------------------------------------------


def ratios(ours: dict, peer: dict) -> dict:
    if "ms_per_step" not in peer:
        return {}
    return {k: peer["ms_per_step"][k] / ours["ms_per_step"][k] for k in PHASES}


PAIRS = {"no_remat": ("none", False), "remat": ("full", True)}  # name: (our ModelConfig.remat, TRL's checkpointing)


def git_commit() -> dict:
    """The checkout's commit, and whether the files this bench runs differ from it."""
    repo = HERE.parent

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "bench/grpo_step.py", "synpro_jax")
    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "dirty_files": [line[3:] for line in dirty.splitlines()],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu_small", help="synpro_jax model preset (random weights)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="compute dtype (float32 master weights everywhere; bfloat16 = TRL's bf16 autocast, tunix's Qwen3 dtype)",
    )
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--num_generations", type=int, default=8, help="G")
    p.add_argument("--prompt_len", type=int, default=64, help="prompt tokens (a power of two >= 16: no padding)")
    p.add_argument("--completion_len", type=int, default=64, help="completion tokens (every completion runs out)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compiles, allocator warm-up)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (medians reported)")
    p.add_argument("--peers", default="trl,tunix", help="comma list of trl, tunix (empty: ours only)")
    p.add_argument("--torch_device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--tunix_python", default=DEFAULT_TUNIX_PYTHON, help="python of a venv with google-tunix")
    p.add_argument("--tunix_timeout", type=int, default=900)
    p.add_argument(
        "--pairs",
        default="no_remat,remat",
        help="comma list of no_remat (TRL gradient_checkpointing=False vs our remat none), remat (TRL "
        "gradient_checkpointing=True, its default, vs our remat full)",
    )
    p.add_argument("--note", default=None, help="free text stored in the report (e.g. how the machine was shared)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()
    peers = [x for x in args.peers.split(",") if x]
    args.pairs = [x for x in args.pairs.split(",") if x]
    if not args.pairs or set(args.pairs) - set(PAIRS):
        p.error(f"--pairs={','.join(args.pairs)}: choose from {', '.join(PAIRS)}")
    unknown = set(peers) - {"trl", "tunix"}
    if unknown:
        p.error(f"--peers: unknown {sorted(unknown)}; choose from trl, tunix")
    if args.prompt_len < 16 or args.prompt_len & (args.prompt_len - 1):
        p.error(
            f"--prompt_len={args.prompt_len}: use a power of two >= 16 so the sampler adds no prompt padding "
            "and both sides see the same sequence length"
        )
    if "trl" in peers:
        import torch

        if args.torch_device is None:
            args.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.torch_device not in ("cpu", "cuda"):
            p.error(f"--torch_device={args.torch_device!r}: choose cpu or cuda")
        if args.torch_device == "cuda" and not torch.cuda.is_available():
            p.error("--torch_device=cuda but torch.cuda.is_available() is False")

    cfg = models.get_preset(args.preset)
    tokenizer = build_tokenizer(cfg.vocab_size)
    total_steps = args.warmup + args.steps
    flat = make_prompts(cfg.vocab_size, args.prompts * total_steps, args.prompt_len)
    prompt_steps = [flat[i * args.prompts : (i + 1) * args.prompts] for i in range(total_steps)]
    rows = args.prompts * args.num_generations
    settings = {
        "preset": args.preset,
        "params": cfg.num_params(),
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "num_layers": cfg.num_layers,
        "dtype": args.dtype,
        "num_generations": args.num_generations,
        "prompts_per_step": args.prompts,
        "rows_per_step": rows,
        "prompt_len": args.prompt_len,
        "completion_len": args.completion_len,
        "beta": 0.005,
        "temperature": 1.0,
        "top_p": 0.9,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "rewards": "format + length (synpro_jax)",
        "kl_bias_correction": GRPOConfig().kl_bias_correction,
        "pairs": args.pairs,
        "torch_threads": args.threads,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
    }
    print(settings, flush=True)
    load_start = os.getloadavg()  # the CPU numbers are only comparable on an otherwise idle machine
    pairs = {}
    tunix = None
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        export_model(cfg, model_dir)
        tokenizer.save_pretrained(model_dir)
        trl_missing = None
        if "trl" in peers:
            try:
                import trl  # noqa: F401
            except ImportError as e:  # a GPU box without the bench extra: record why, keep our numbers
                trl_missing = f"import trl failed: {e}"
        for name in args.pairs:
            remat, checkpointing = PAIRS[name]
            pair = {"synpro_jax_remat": remat, "trl_gradient_checkpointing": checkpointing}
            load = {"start": os.getloadavg()}
            ours = run_ours(cfg, model_dir, tokenizer, prompt_steps, args, remat=remat)
            load["after_synpro_jax"] = os.getloadavg()
            print(name, "synpro_jax", ours["ms_per_step"], flush=True)
            pair["systems"] = {"synpro_jax": ours}
            if "trl" in peers:
                peer = (
                    {"system": "trl", "skipped": trl_missing}
                    if trl_missing
                    else run_trl(model_dir, tokenizer, prompt_steps, args, gradient_checkpointing=checkpointing)
                )
                load["after_trl"] = os.getloadavg()
                print(name, "trl", peer.get("ms_per_step", peer), flush=True)
                pair["systems"]["trl"] = peer
                pair["speedup_vs_trl"] = ratios(ours, peer)
            pair["load_average_1_5_15min"] = load
            pairs[name] = pair
        if "tunix" in peers:
            tunix = run_tunix(model_dir, prompt_steps, args)
            print("tunix", tunix.get("ms_per_step", tunix), flush=True)
    report = {
        "benchmark": "GRPO step time by phase: synpro_jax vs TRL GRPOTrainer (recomputation matched pair by pair) "
        "vs tunix GRPOLearner",
        "git_commit": git_commit(),
        "measurement_note": args.note,
        "settings": settings,
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": {"start": load_start, "end": os.getloadavg()},
        "platform": platform.platform(),
        "torch_device": args.torch_device,
        "pairs": pairs,
        "peer_setup": {
            "trl": "pip install trl==1.16.0 (setup.py's bench extra: torch==2.13.0, adds accelerate, datasets; "
            "no vLLM)",
            "tunix": "python -m venv /work/venv_tunix && /work/venv_tunix/bin/pip install google-tunix==0.1.7 "
            "gin-config (own jax 0.10.2, transformers 5.12.1; gin-config for synpro_jax's rewards)",
        },
        "note": "pairs[name].speedup_vs_trl[phase] = TRL ms / synpro_jax ms (> 1: synpro_jax is faster); update = "
        "total - rollout - ref_logprobs - rewards on every side. no_remat: TRL gradient_checkpointing=False "
        "vs synpro_jax remat='none'; remat: TRL gradient_checkpointing=True (TRL 1.16's default) vs "
        "synpro_jax remat='full'.",
    }
    if tunix is not None:
        base = pairs.get("no_remat") or next(iter(pairs.values()))
        report["tunix"] = {
            "system": tunix,
            "speedup_vs_tunix": ratios(base["systems"]["synpro_jax"], tunix),
            "against": "synpro_jax of the pair " + ("no_remat" if "no_remat" in pairs else next(iter(pairs))),
        }
    for name, pair in pairs.items():
        if pair.get("speedup_vs_trl"):
            print(f"{name}: speedup vs trl:", {k: round(v, 2) for k, v in pair["speedup_vs_trl"].items()}, flush=True)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
