"""A whole SynPro experiment on tiny presets, for the loop tests: ``make_workspace`` writes its data, tokenizer,
starting generator and gin file; ``start_loop`` runs ``synpro loop`` on it as a real process (so it can be
SIGKILLed)."""

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np

WORDS = (
    "the a cat dog river stone light quickly under over green blue seven runs sleeps reads map city north "
    "small old bright"
).split()

GIN = """
include 'gin/runs/loop.gin'

MODEL = @synpro.preset()
synpro.preset.name = "tiny"
synpro.preset.vocab_size = 480
synpro.preset.max_seq_len = 1024

ROUNDS = 2
ROUND_STEPS = [4, 2, 2]
GENERATORS = [
    {{"name": "rephrase", "operation": "rephrase", "start": "{ws}/generator", "train_rounds": [1]}},
    {{"name": "reformat", "operation": "reformat", "start": "{ws}/generator", "mode": "continue",
      "grpo_steps": [3, 2]}},
]
GRPO_STEPS = 3
GLOBAL_BATCH = 8
SEQ_LEN = 32
CORPUS = "toy"
ORGANIC = ["{ws}/organic.jsonl"]
VOCABULARY = "{ws}/sp.model"
REFERENCE = ["{ws}/reference.jsonl"]
MAX_LEN = 64
PROMPTS_PER_STEP = 2
LEARNING_RATE = 3e-3
WARMUP_STEPS = 2

synpro.TrainerConfig.eval_every = 2
synpro.TrainerConfig.eval_batches = 1
synpro.TrainerConfig.checkpoint_every = 2
synpro.TrainerConfig.progress = False
synpro.DataConfig.validation_docs = 8
synpro.ProbeConfig.steps = 2
synpro.ProbeConfig.batch_size = 4
synpro.probe.batch_size = 4
synpro.GRPOConfig.num_generations = 2
synpro.GRPOConfig.max_prompt_tokens = 512
synpro.GRPOConfig.max_completion_tokens = 8
synpro.GRPOConfig.learning_rate = 3e-3
synpro.GRPOConfig.warmup_ratio = 0.0
synpro.grpo.dtype = None
synpro.grpo.influence_max_len = 64
synpro.GRPORunConfig.accum_steps = 1
synpro.GRPORunConfig.checkpoint_every = 1
synpro.GRPORunConfig.async_checkpoints = False
synpro.GRPORunConfig.max_source_chars = 1000
synpro.GRPORunConfig.progress = False
synpro.RewardsConfig.weights = {{"data_influence": 1.0, "length": 1.0, "format": 1.0}}
synpro.RewardsConfig.options = {{"data_influence": {{"min_chars": 1}}}}
reformat/synpro.RewardsConfig.weights = {{"data_influence": 1.0, "format": 1.0}}
synpro.SynthesisConfig.max_prompt_tokens = 512
synpro.SynthesisConfig.max_new_tokens = 8
synpro.SynthesisConfig.batch_size = 2
synpro.SynthesisConfig.max_source_chars = 1000
synpro.SynthesisConfig.keep_unparsed = True
synpro.EvalConfig.tasks = ["toy={ws}/items.jsonl"]
synpro.EvalConfig.ppl = ["{ws}/heldout.jsonl"]
synpro.loop.progress = False
"""


def _doc(rng) -> str:
    return " ".join(" ".join(rng.choice(WORDS, 7)).capitalize() + "." for _ in range(3))


def make_workspace(root: Path) -> Path:
    """Data, tokenizer and a random tiny OLMo-2 generator (HF directory) under ``root``; returns the gin file."""
    import jax

    from synpro_jax import models
    from synpro_jax.data.vocab import train_sentencepiece
    from synpro_jax.generation import prompts
    from synpro_jax.models import hf

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    docs = [_doc(rng) for _ in range(40)]
    (root / "organic.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (root / "heldout.jsonl").write_text("".join(json.dumps({"text": _doc(rng)}) + "\n" for _ in range(4)))
    (root / "reference.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"Which word comes after {w}?", "completion": f"The {w} runs."}) + "\n"
            for w in WORDS[:12]
        )
    )
    (root / "items.jsonl").write_text(
        "".join(
            json.dumps({"context": f"The {w}", "choices": ["runs under the river.", "stone seven blue."], "label": 0})
            + "\n"
            for w in WORDS[:6]
        )
    )
    chat = [part for op in prompts.OPERATIONS for part in prompts.prompt_parts(op)]
    sp = train_sentencepiece(docs + chat * 3, root / "sp.model", 480)
    cfg = models.get_preset("tiny").replace(vocab_size=480, max_seq_len=1024)
    generator = hf.save(cfg, models.init_params(cfg, jax.random.key(1)), root / "generator")
    (generator / "tokenizer.model").write_bytes(Path(sp).read_bytes())
    gin_file = root / "loop.gin"
    gin_file.write_text(GIN.format(ws=root))
    return gin_file


def start_loop(gin_file: Path, out_dir: Path, log_path: Path, *extra: str) -> subprocess.Popen:
    """``synpro loop`` on 2 host devices (``extra``: more --gin.KEY=VALUE flags), its output appended to
    ``log_path``. The runs of one workspace share JAX's persistent compilation cache: a restarted loop reuses
    what the killed one compiled, as a user's would with JAX_COMPILATION_CACHE_DIR set."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        JAX_COMPILATION_CACHE_DIR=str(gin_file.parent / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    cache = out_dir.parent / f"{out_dir.name}_cache"
    cmd = [
        sys.executable,
        "-m",
        "synpro_jax.cli",
        "loop",
        f"--gin_file={gin_file}",
        f"--gin.LOOP_DIR='{out_dir}'",
        f"--gin.synpro.DataConfig.cache_dir='{cache}'",
        *extra,
    ]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
