"""The shipped commands with every path on gs://, against a real GCS emulator (fake-gcs-server run as its own
process): `synpro train` as tpu/README.md launches it (the shipped olmo_400m_dclm.gin, made tiny by overrides),
then `synpro probe` scoring from that run and `synpro synthesize` generating from it, each killed and resumed.

Everything a run reads (DCLM-style .jsonl.zst shards, a tokenizer.json, the reference task) lives in the bucket,
and everything it writes (corpus cache, orbax checkpoints, metrics, scores, records) must land there: the tests
list the bucket's objects through the emulator's own API and check that no local ``gs:`` folder appears.
"""

import io
import json
import os
from pathlib import Path
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zstandard

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "alpha beta gamma delta river mountain question answer because therefore seven eleven north south garden window"
).split()
DOCS_PER_SHARD = 60

pytestmark = pytest.mark.slow


def _zst_jsonl(rows) -> bytes:
    raw = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return zstandard.ZstdCompressor().compress(raw)


def _tokenizer_json(texts) -> str:
    """A byte-level BPE tokenizer.json with the dolma2 special tokens (what VOCABULARY points at)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return tok.to_str()


class Bucket:
    """One bucket of the emulator with the run's inputs uploaded; ``run()`` starts synpro against it."""

    def __init__(self, emulator, name: str, tmp: Path):
        self.emulator, self.name, self.tmp = emulator, name, tmp
        self.url = emulator.create_bucket(name)
        rng = np.random.default_rng(0)
        self.texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 60)))) for _ in range(2 * DOCS_PER_SHARD)]
        self.put("tokenizers/dolma2/tokenizer.json", _tokenizer_json(self.texts).encode())
        for s in range(2):
            rows = [
                {"text": t, "id": f"doc{s}-{i}"}
                for i, t in enumerate(self.texts[s * DOCS_PER_SHARD : (s + 1) * DOCS_PER_SHARD])
            ]
            self.put(f"dclm/shard_{s:02d}.jsonl.zst", _zst_jsonl(rows))
        self.put(
            "flan/qa.jsonl",
            "".join(
                json.dumps({"prompt": f"what follows {WORDS[i % 16]}?", "completion": WORDS[(i + 1) % 16]}) + "\n"
                for i in range(24)
            ).encode(),
        )

    def put(self, key: str, data: bytes) -> None:
        from etils import epath

        with self.emulator.clients():
            epath.Path(f"{self.url}/{key}").write_bytes(data)

    def objects(self, prefix: str = "") -> list[str]:
        return self.emulator.objects(self.name, prefix)

    def env(self) -> dict:
        return {
            **os.environ,
            **self.emulator.env,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        }

    def start(self, *args) -> tuple[subprocess.Popen, Path]:
        """synpro in its own process, from a scratch working directory (a relative ``gs:`` folder would show), its
        output in a file (a pipe nobody reads while polling would fill and stall it)."""
        self.runs = getattr(self, "runs", 0) + 1
        log = self.tmp / f"run{self.runs}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "synpro_jax.cli", *args],
                cwd=self.tmp,
                env=self.env(),
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        return proc, log

    def run(self, *args, timeout: float = 600) -> subprocess.CompletedProcess:
        proc, log = self.start(*args)
        try:
            proc.wait(timeout=timeout)
        finally:
            proc.kill()
            proc.wait()
        text = log.read_text(errors="replace")
        return subprocess.CompletedProcess(proc.args, proc.returncode, text, text)

    def kill_when(self, started: tuple[subprocess.Popen, Path], ready, timeout: float = 600) -> str:
        """SIGKILL the process as soon as ``ready(objects)`` holds for the bucket's objects; its output."""
        proc, log = started
        deadline = time.monotonic() + timeout
        try:
            while not ready(self.objects()):
                if proc.poll() is not None:
                    raise AssertionError(
                        f"exited {proc.returncode} before the kill point:\n{log.read_text(errors='replace')[-3000:]}"
                    )
                assert time.monotonic() < deadline, "the kill point never came"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]
        return log.read_text(errors="replace")

    def no_local_gs_folder(self) -> None:
        found = [str(p) for p in [self.tmp, REPO] if (p / "gs:").exists()]
        assert not found, f"a local gs: folder appeared: {found}"


@pytest.fixture(scope="module")
def bucket(gcs_emulator, tmp_path_factory):
    return Bucket(gcs_emulator, "synpro-runs", tmp_path_factory.mktemp("cwd"))


def readme_train_command(bucket_url: str) -> list[str]:
    """The `synpro train` command tpu/README.md launches on a v5e-8, as written, with gs://BUCKET replaced."""
    text = (REPO / "tpu" / "README.md").read_text().replace("\\\n", " ")
    launch = next(line for line in text.splitlines() if line.startswith("python tpu/launch.py"))
    argv = shlex.split(launch)
    command = argv[argv.index("--") + 1 :]
    assert command[:2] == ["synpro", "train"], command
    return [a.replace("gs://BUCKET", bucket_url) for a in command[1:]]


def train_flags(b: Bucket, steps: int) -> list[str]:
    """tpu/README.md's v5e-8 command, with the model, batch and schedule made tiny."""
    return [
        *readme_train_command(b.url),
        # the shipped pretrain.gin keeps the corpus cache in runs/cache: on the bucket here
        f'--gin.synpro.DataConfig.cache_dir="{b.url}/cache"',
        '--gin.synpro.preset.name="tiny"',
        '--gin.synpro.preset.dtype="float32"',
        "--gin.synpro.preset.vocab_size=320",
        *TINY_MEMORY_KNOBS,
        f"--gin.NUM_STEPS={steps}",
        "--gin.GLOBAL_BATCH=8",
        "--gin.SEQ_LEN=64",
        "--gin.WARMUP_STEPS=2",
        "--gin.synpro.DataConfig.organic_budget_tokens=4000",
        "--gin.synpro.DataConfig.validation_docs=8",
        "--gin.synpro.TrainerConfig.checkpoint_every=3",
        "--gin.synpro.TrainerConfig.eval_every=3",
        "--gin.synpro.TrainerConfig.eval_batches=1",
        "--gin.synpro.TrainerConfig.log_every=1",
        "--gin.synpro.TrainerConfig.progress=False",
    ]


# The shipped experiment sets memory knobs for a 16 GiB chip (micro-batches, loss chunks); a tiny batch takes none.
TINY_MEMORY_KNOBS = [
    "--gin.synpro.TrainerConfig.accum_steps=1",
    "--gin.synpro.preset.loss_chunk=0",
    '--gin.synpro.preset.remat="none"',
]


@pytest.fixture(scope="module")
def trained(bucket):
    """6 steps (checkpoints at 3 and 6), then the same command to 9 steps."""
    first = bucket.run(*train_flags(bucket, 6))
    assert first.returncode == 0, first.stderr[-4000:]
    after_first = bucket.objects("runs/olmo_400m/")
    second = bucket.run(*train_flags(bucket, 9))
    assert second.returncode == 0, second.stderr[-4000:]
    return first, after_first, second


def test_train_on_a_bucket_checkpoints_and_resumes(bucket, trained):
    first, after_first, second = trained
    ckpts = {
        int(name.split("/")[3])
        for name in after_first
        if name.startswith("runs/olmo_400m/checkpoints/")
        and name.endswith("/commit_success.txt")
        and name.count("/") == 4
    }
    assert {3, 6} <= ckpts and max(ckpts) == 6, after_first  # orbax also keeps its first save (step 1)
    assert "resuming from step 6" in second.stderr, second.stderr[-3000:]
    objects = bucket.objects()
    assert any(o.startswith("cache/") for o in objects), "the corpus cache is not in the bucket"
    assert "runs/olmo_400m/summary.json" in objects and "runs/olmo_400m/metrics.jsonl" in objects
    assert any(o.startswith("runs/olmo_400m/tensorboard/events.out.tfevents") for o in objects)
    assert "runs/olmo_400m/checkpoints/9/commit_success.txt" in objects
    with bucket.emulator.clients():
        from etils import epath

        from synpro_jax.train.metrics import read_records

        steps = [
            r["step"] for r in read_records(epath.Path(bucket.url) / "runs/olmo_400m/metrics.jsonl") if "loss" in r
        ]
        summary = json.loads((epath.Path(bucket.url) / "runs/olmo_400m/summary.json").read_text())
    assert steps == list(range(1, 10)), steps  # each step logged once: the resume redid nothing
    assert summary["step"] == 9
    # The resume read the corpus cache the first run wrote instead of tokenizing again.
    assert f"using cached corpus {bucket.url}/cache/" in second.stderr, second.stderr[-3000:]
    bucket.no_local_gs_folder()


def probe_flags(b: Bucket) -> list[str]:
    return [
        "probe",
        "--gin_file=gin/models/tiny.gin",
        "--gin_file=gin/runs/probe.gin",
        "--gin.synpro.preset.vocab_size=320",
        f'--gin.CHECKPOINT="{b.url}/runs/olmo_400m"',
        f'--gin.VOCABULARY="{b.url}/tokenizers/dolma2/tokenizer.json"',
        f'--gin.REFERENCE=["{b.url}/flan/qa.jsonl"]',
        f'--gin.PROBE_CORPUS=["{b.url}/dclm/*.jsonl.zst"]',
        f'--gin.PROBE_OUT="{b.url}/probe"',
        "--gin.MAX_LEN=64",
        "--gin.synpro.ProbeConfig.steps=2",
        "--gin.synpro.ProbeConfig.batch_size=4",
        "--gin.synpro.probe.batch_size=4",
        "--gin.synpro.probe.chunk_docs=8",
    ]


def test_probe_on_a_bucket_scores_every_document_after_a_kill(bucket, trained):
    parts = lambda objects: [o for o in objects if o.startswith("probe/scores/parts/")]  # noqa: E731
    killed = bucket.kill_when(bucket.start(*probe_flags(bucket)), lambda objects: parts(objects))
    assert "Traceback" not in killed, killed[-3000:]
    kept = parts(bucket.objects())
    assert kept and "probe/scores/influence.npz" not in bucket.objects()
    done = bucket.run(*probe_flags(bucket))
    assert done.returncode == 0, done.stderr[-4000:]
    objects = bucket.objects("probe/")
    assert "probe/scores/influence.npz" in objects and "probe/finetuned/config.json" in objects
    with bucket.emulator.clients():
        from etils import epath

        data = (epath.Path(bucket.url) / "probe/scores/influence.npz").read_bytes()
    with np.load(io.BytesIO(data)) as z:
        ids = z["ids"].tolist()
        np.testing.assert_allclose(z["influence"], z["loss_before"] - z["loss_after"], atol=1e-5)
    assert len(ids) == len(set(ids)) == 2 * DOCS_PER_SHARD, ids
    assert f"{8 * len(kept)}/{2 * DOCS_PER_SHARD}" in done.stderr, done.stderr[-3000:]  # resumed after the kept parts
    assert all(k in objects for k in kept), "a part the killed run wrote was not kept"
    bucket.no_local_gs_folder()


def synth_flags(b: Bucket) -> list[str]:
    return [
        "synthesize",
        "--gin_file=gin/runs/synthesize.gin",
        f'--gin.GENERATOR="{b.url}/runs/olmo_400m"',
        f'--gin.SHARDS=["{b.url}/dclm/*.jsonl.zst"]',
        f'--gin.SYNTH_OUT="{b.url}/synthetic/rephrase_r1"',
        '--gin.OPERATION="rephrase"',
        f'--gin.synpro.synthesize.vocabulary="{b.url}/tokenizers/dolma2/tokenizer.json"',
        "--gin.synpro.synthesize.model=%MODEL",
        "--gin_file=gin/models/tiny.gin",
        "--gin.synpro.preset.vocab_size=320",
        "--gin.synpro.SynthesisConfig.max_prompt_tokens=400",
        "--gin.synpro.SynthesisConfig.max_new_tokens=8",
        "--gin.synpro.SynthesisConfig.batch_size=4",
        "--gin.synpro.SynthesisConfig.keep_unparsed=True",
    ]


def test_synthesis_on_a_bucket_writes_every_document_once_after_a_kill(bucket, trained):
    batches = lambda objects: [o for o in objects if ".jsonl.partial/" in o]  # noqa: E731
    bucket.kill_when(bucket.start(*synth_flags(bucket)), lambda objects: len(batches(objects)) >= 2)
    kept = batches(bucket.objects())
    with bucket.emulator.clients():
        from etils import epath

        before = {}  # the records the killed run wrote, by source id
        for name in kept:
            for line in (epath.Path(bucket.url) / name).read_text().splitlines():
                record = json.loads(line)
                before[record["source_id"]] = record
    done = bucket.run(*synth_flags(bucket))
    assert done.returncode == 0, done.stderr[-4000:]
    objects = bucket.objects("synthetic/rephrase_r1/")
    assert "synthetic/rephrase_r1/synthesis.json" in objects
    assert not batches(objects), "batch objects of finished parts are left behind"
    with bucket.emulator.clients():
        from etils import epath

        from synpro_jax.generation import synthesize

        records = list(synthesize.iter_records(epath.Path(bucket.url) / "synthetic/rephrase_r1"))
        manifest = json.loads((epath.Path(bucket.url) / "synthetic/rephrase_r1/synthesis.json").read_text())
    ids = [r["source_id"] for r in records]
    assert len(ids) == len(set(ids)) == 2 * DOCS_PER_SHARD, (len(ids), len(set(ids)))
    assert kept and before
    after = {r["source_id"]: r for r in records}
    for source_id, record in before.items():  # kept as written
        assert after[source_id] == record, source_id
    resumed = sum(shard.get("resumed", 0) for shard in manifest["shards"])
    assert resumed == len(before), manifest["shards"]  # the kept records were not generated again
    bucket.no_local_gs_folder()
