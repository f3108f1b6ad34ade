"""`synpro serve` over a synpro run's checkpoint (not an HF directory): the engine loads it with --preset and
answers like the library sampler on the same weights."""

import asyncio

import numpy as np
import pytest
import seqio

from synpro_jax import models, sharding
from synpro_jax.data.corpus import TokenizedCorpus
from synpro_jax.data.packing import PackedStream
from synpro_jax.generation.sampler import sample
from synpro_jax.serve.server import load_engine
from synpro_jax.train import OptimizerConfig, params_io
from synpro_jax.train.trainer import Trainer, TrainerConfig


@pytest.mark.slow
def test_serves_a_run_checkpoint_with_its_preset(tmp_path):
    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(8, 1, 1))
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 256, size=rng.integers(5, 40)) for _ in range(32)]
    stream = PackedStream(TokenizedCorpus.from_token_lists(docs, [f"d{i}" for i in range(32)]), 17, eos_id=1)
    tcfg = TrainerConfig(
        out_dir=str(tmp_path),
        num_steps=2,
        global_batch=8,
        seq_len=16,
        checkpoint_every=2,
        async_checkpoints=False,
        progress=False,
        log_every=1,
        eval_every=100,
    )
    Trainer(cfg, mesh, OptimizerConfig(learning_rate=1e-2, warmup_steps=1), tcfg, stream).run()
    vocab = seqio.PassThroughVocabulary(256, eos_id=1)

    with pytest.raises(ValueError, match="--preset"):
        load_engine(str(tmp_path), vocab=vocab)
    engine = load_engine(str(tmp_path), vocab=vocab, preset="tiny", settings={"model_name": "run"})
    try:
        prompt = [5, 17, 42, 99, 7]
        choices, usage = asyncio.run(engine.generate([prompt], {"max_tokens": 9, "temperature": 0}, 16))
        params, step = params_io.load_params_and_step(cfg, sharding.single_device_mesh(), tmp_path)
        assert step == 2
        want = sample(cfg, params, [prompt], max_new_tokens=9, eos_id=1)
        ids = want.completions()[0]
        assert usage["completion_tokens"] == len(ids) and usage["prompt_tokens"] == 5
        assert choices[0][1] == vocab.decode(ids[:-1] if want.finished[0] else ids)
    finally:
        engine.close()
