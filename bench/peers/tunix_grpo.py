"""tunix's GRPO step time by phase, for bench/grpo_step.py. Runs in a venv with google-tunix (its own jax):

    /work/venv_tunix/bin/python bench/peers/tunix_grpo.py SPEC.json RESULT.json

SPEC (written by bench/grpo_step.py): model_dir (the HF export and the word-level tokenizer), prompt_steps (token
ids per step), num_generations, prompt_len, completion_len, warmup, steps, repo (for synpro_jax's rewards).

tunix has no OLMo-2 model, so the policy is tunix's Qwen3 with the export's sizes (layers, width, heads, MLP,
vocabulary; untied head), randomly initialised: the same FLOPs per token, not the same weights (Qwen3 puts the
norms before the blocks and its QK-norm per head; OLMo-2 after, over the full width). Rollouts use tunix's
"vanilla" JAX sampler with the actor, reference and rollout model colocated on one device.

Phases, wrapped around tunix's own methods:
- rollout: ``RLCluster.generate`` (tokenize, sample, detokenize);
- ref_logprobs: ``RLCluster.get_ref_per_token_logps`` (block_until_ready);
- rewards: ``GRPOLearner._compute_rewards`` (the same synpro_jax format + length suite as the other systems);
- total: from one ``_run_global_step`` entry to the next (the last one: to the end of ``train``), so it includes
  the weight sync to the sampler and tunix's metric bookkeeping; update = total - the three phases.
"""

from __future__ import annotations

import json
from pathlib import Path
import sys
import time

import numpy as np

PHASES = ("rollout", "ref_logprobs", "rewards", "update", "total")


def main(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, spec["repo"])
    from flax import nnx
    import jax
    import jax.numpy as jnp
    import optax
    import transformers
    from tunix.models.qwen3 import model as qwen3
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    from synpro_jax.rl.rewards import RewardInputs, RewardSuite, make_reward

    model_dir = Path(spec["model_dir"])
    hf_cfg = json.loads((model_dir / "config.json").read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    g, p_len, c_len = spec["num_generations"], spec["prompt_len"], spec["completion_len"]
    total_steps = spec["warmup"] + spec["steps"]
    heads = hf_cfg["num_attention_heads"]
    cfg = qwen3.ModelConfig(
        num_layers=hf_cfg["num_hidden_layers"],
        vocab_size=hf_cfg["vocab_size"],
        embed_dim=hf_cfg["hidden_size"],
        hidden_dim=hf_cfg["intermediate_size"],
        num_heads=heads,
        head_dim=hf_cfg["hidden_size"] // heads,
        num_kv_heads=hf_cfg.get("num_key_value_heads", heads),
        rope_theta=int(hf_cfg.get("rope_theta", 10000)),
        norm_eps=hf_cfg.get("rms_norm_eps", 1e-6),
        use_tied_embedding=False,
        dtype=jnp.bfloat16 if spec["dtype"] == "bfloat16" else jnp.float32,
        param_dtype=jnp.float32,
    )
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh):
        actor = qwen3.Qwen3(cfg, rngs=nnx.Rngs(0))
        reference = qwen3.Qwen3(cfg, rngs=nnx.Rngs(0))

    suite = RewardSuite(
        {"format": make_reward("format"), "length": make_reward("length")}, {"format": 1.0, "length": 1.0}
    )

    def synpro_rewards(prompts, completions, **_):
        group = np.arange(len(completions)) // g
        return suite(RewardInputs("rephrase", list(prompts), list(completions), group)).total.tolist()

    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-6, max(1, round(0.1 * total_steps)), total_steps, 1e-7)
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
    )
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={
            rl_cluster_lib.Role.ACTOR: mesh,
            rl_cluster_lib.Role.REFERENCE: mesh,
            rl_cluster_lib.Role.ROLLOUT: mesh,
        },
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optimizer, eval_every_n_steps=10**9, max_steps=total_steps
        ),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=c_len,
            max_prompt_length=p_len,
            kv_cache_size=p_len + c_len + 16,
            temperature=1.0,
            top_p=0.9,
            top_k=None,
            eos_tokens=[hf_cfg["vocab_size"]],
        ),  # an id outside the vocabulary: every completion runs out
    )
    cluster = rl_cluster_lib.RLCluster(
        actor=actor, reference=reference, tokenizer=tokenizer, cluster_config=cluster_config
    )
    algo = grpo_learner.GRPOConfig(
        num_generations=g,
        num_iterations=1,
        beta=0.005,
        epsilon=0.2,
        loss_agg_mode="token-mean",
        kl_loss_mode="low_var_kl",
    )
    learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo, reward_fns=[synpro_rewards])

    current: dict[str, float] = {}
    starts: list[float] = []
    steps: list[dict[str, float]] = []
    lengths: list[int] = []

    def timed(phase, fn, block=False):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            if block:
                out = jax.block_until_ready(out)
            current[phase] = current.get(phase, 0.0) + time.perf_counter() - t
            return out

        return wrapper

    generate = timed("rollout", cluster.generate)

    def checked_generate(*a, **k):
        out = generate(*a, **k)
        lengths.extend(len(t) for t in out.tokens)
        return out

    cluster.generate = checked_generate
    cluster.get_ref_per_token_logps = timed("ref_logprobs", cluster.get_ref_per_token_logps, block=True)
    learner._compute_rewards = timed("rewards", learner._compute_rewards)
    run_global_step = learner._run_global_step

    def step_start(*a, **k):
        now = time.perf_counter()
        if starts:
            steps.append({**current, "total": now - starts[-1]})
        current.clear()
        starts.append(now)
        return run_global_step(*a, **k)

    learner._run_global_step = step_start
    data = [{"prompts": np.array([tokenizer.decode(p) for p in prompts])} for prompts in spec["prompt_steps"]]
    learner.train(data)
    steps.append({**current, "total": time.perf_counter() - starts[-1]})

    timed_steps = steps[spec["warmup"] : total_steps]
    per_step = {k: [s.get(k, 0.0) for s in timed_steps] for k in PHASES if k != "update"}
    per_step["update"] = [
        s["total"] - s.get("rollout", 0) - s.get("ref_logprobs", 0) - s.get("rewards", 0) for s in timed_steps
    ]
    rows = len(spec["prompt_steps"][0]) * g
    ms = {k: 1e3 * float(np.median(v)) for k, v in per_step.items()}
    from importlib.metadata import version

    result = {
        "system": "tunix",
        "tunix": version("google-tunix"),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "model": f"tunix Qwen3 {cfg.num_layers} layers, d={cfg.embed_dim}, vocab {cfg.vocab_size} (random init; "
        "same sizes as the OLMo-2 export, not the same weights)",
        "steps_seen": len(steps),
        "completion_lengths": sorted(set(lengths)),
        "ms_per_step": ms,
        "ms_per_step_all": {k: [round(1e3 * x, 3) for x in v] for k, v in per_step.items()},
        "rollout_tokens_per_s": rows * c_len / (ms["rollout"] / 1e3),
        "update_tokens_per_s": rows * (p_len + c_len) / (ms["update"] / 1e3),
    }
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:3])
