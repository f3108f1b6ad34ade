"""A synthesis job run as its own process by test_synthesize.py; it can SIGKILL itself after N written batches.

python synthesis_job.py HF_DIR SP_MODEL OUT_DIR KILL_AFTER SHARD [SHARD ...]   (KILL_AFTER 0 = never)
"""

import os
import signal
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from synpro_jax.data.vocab import load_vocabulary  # noqa: E402
from synpro_jax.generation import synthesize  # noqa: E402
from synpro_jax.models import hf  # noqa: E402

SETTINGS = dict(operation="rephrase", max_prompt_tokens=1000, max_new_tokens=8, batch_size=2, keep_unparsed=True)


def main(hf_dir, sp_model, out_dir, kill_after, *shards):
    cfg, params = hf.load(hf_dir)
    synth = synthesize.Synthesizer(
        cfg, params, load_vocabulary(sp_model), synthesize.SynthesisConfig(**SETTINGS), generator=hf_dir
    )
    kill_after, written = int(kill_after), [0]
    generate = synth._generate

    def generate_then_maybe_die(batch):
        records = generate(batch)
        written[0] += 1
        if kill_after and written[0] > kill_after:  # die before this batch is written: mid-shard, mid-job
            os.kill(os.getpid(), signal.SIGKILL)
        return records

    synth._generate = generate_then_maybe_die
    synth.run(list(shards), out_dir, progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
