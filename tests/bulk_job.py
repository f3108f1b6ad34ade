"""A bulk job (synthesis or corpus scoring) as one of several jax.distributed processes, for
test_two_processes.py; process 1 can SIGKILL itself before its (N+1)-th batch (synthesis) or chunk (scoring).

    JAX_COORDINATOR_ADDRESS=... JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=I python bulk_job.py KIND WORKSPACE OUT N
"""

import json
import os
from pathlib import Path
import signal
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

WORDS = "alpha beta gamma delta river mountain question answer because therefore seven eleven".split()
DOCUMENTS = 24


def make_workspace(root: Path) -> Path:
    """A tiny random Olmo2 model as an HF directory, a SentencePiece vocabulary, an organic shard of 24 documents
    and a reference task."""
    import jax
    import numpy as np

    from synpro_jax import models
    from synpro_jax.data.vocab import train_sentencepiece
    from synpro_jax.models import hf

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    text = [" ".join(rng.choice(WORDS, size=12)) for _ in range(300)]
    train_sentencepiece(text + ["Here is the rewritten document: Rewrite"], root / "sp.model", vocab_size=290)
    cfg = models.get_preset("tiny", vocab_size=320).replace(max_seq_len=1024)
    hf.save(cfg, jax.device_get(models.init_params(cfg, jax.random.key(0))), root / "model")
    (root / "organic.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in text[:DOCUMENTS]))
    (root / "ref.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"what is {WORDS[i % 12]}?", "completion": WORDS[(i + 1) % 12]}) + "\n"
            for i in range(16)
        )
    )
    return root


def die_after(owner, name: str, calls: int) -> None:
    original = getattr(owner, name)
    made = [0]

    def wrapped(self, *args, **kwargs):
        import jax

        made[0] += 1
        if calls and jax.process_index() == 1 and made[0] > calls:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    setattr(owner, name, wrapped)


def main(kind: str, workspace: str, out: str, kill_after: str) -> None:
    from synpro_jax import distributed

    distributed.initialize()
    from synpro_jax.generation import run as generation_run
    from synpro_jax.influence import run as influence_run
    from synpro_jax.models import hf

    ws = Path(workspace)
    if kind == "synthesize":
        from synpro_jax.generation.synthesize import SynthesisConfig, Synthesizer

        die_after(Synthesizer, "_write", int(kill_after))  # before the write after kill_after writes
        settings = SynthesisConfig(
            operation="rephrase", max_prompt_tokens=720, max_new_tokens=8, batch_size=2, keep_unparsed=True
        )
        generation_run.synthesize(
            generation_run.SynthesizeJob(
                generator=str(ws / "model"),
                shards=[str(ws / "organic.jsonl")],
                out_dir=out,
                settings=settings,
                vocabulary=str(ws / "sp.model"),
                progress=False,
            )
        )
    elif kind == "probe":
        from synpro_jax.influence.probe import Probe, ProbeConfig

        die_after(Probe, "score_docs", int(kill_after))
        influence_run.probe(
            influence_run.ProbeJob(
                model=hf.read_config(ws / "model"),
                checkpoint=str(ws / "model"),
                vocabulary=str(ws / "sp.model"),
                reference=[str(ws / "ref.jsonl")],
                corpus=[str(ws / "organic.jsonl")],
                out_dir=out,
                settings=ProbeConfig(steps=2, batch_size=8, seq_len=32),
                max_len=32,
                batch_size=4,
                chunk_docs=3,
            )
        )
    else:
        raise SystemExit(f"unknown job {kind!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
