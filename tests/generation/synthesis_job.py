"""A synthesis job run as its own process by test_synthesize.py; it can SIGKILL itself before the write that
would take it past N records.

python synthesis_job.py HF_DIR SP_MODEL OUT_DIR KILL_AFTER BATCHING SHARD [SHARD ...]   (KILL_AFTER 0 = never)
"""

import os
import signal
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from synpro_jax.data.vocab import load_vocabulary  # noqa: E402
from synpro_jax.generation import synthesize  # noqa: E402
from synpro_jax.models import hf  # noqa: E402

SETTINGS = dict(operation="rephrase", max_prompt_tokens=1000, max_new_tokens=8, batch_size=2, keep_unparsed=True)


def main(hf_dir, sp_model, out_dir, kill_after, batching, *shards):
    cfg, params = hf.load(hf_dir)
    settings = synthesize.SynthesisConfig(**SETTINGS, batching=batching)
    synth = synthesize.Synthesizer(cfg, params, load_vocabulary(sp_model), settings, generator=hf_dir)
    kill_after, written = int(kill_after), [0]
    write = synth._write

    def maybe_die_then_write(append, records):
        if kill_after and written[0] + len(records) > kill_after:  # die before this write: mid-shard, mid-job
            os.kill(os.getpid(), signal.SIGKILL)
        written[0] += len(records)
        write(append, records)

    synth._write = maybe_die_then_write
    synth.run(list(shards), out_dir, progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
