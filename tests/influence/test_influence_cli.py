"""`synpro probe` and `synpro influence-server` end to end, as subprocesses, on a tiny model saved as an HF
directory, a SentencePiece vocabulary trained here, and small reference and corpus files."""

import json
import os
from pathlib import Path
import subprocess
import sys
import time
import urllib.request

import jax
import numpy as np
import pytest

from synpro_jax import models
from synpro_jax.data.vocab import train_sentencepiece
from synpro_jax.models import hf

REPO = Path(__file__).resolve().parents[2]
WORDS = "alpha beta gamma delta river mountain question answer because therefore seven eleven".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_cli")
    rng = np.random.default_rng(0)
    text = [" ".join(rng.choice(WORDS, size=30)) for _ in range(300)]
    vocab = train_sentencepiece(text, root / "sp.model", vocab_size=290)
    cfg = models.get_preset("tiny", vocab_size=320)
    hf.save(cfg, jax.device_get(models.init_params(cfg, jax.random.key(0))), root / "theta")
    with (root / "ref.jsonl").open("w") as fh:
        for i in range(20):
            fh.write(json.dumps({"prompt": f"what is {WORDS[i % 12]}?", "completion": f"{WORDS[(i + 1) % 12]}"}) + "\n")
    with (root / "corpus.jsonl").open("w") as fh:
        for t in text[:30]:
            fh.write(json.dumps({"text": t}) + "\n")
    flags = [
        "--gin_file=gin/models/tiny.gin",
        "--gin_file=gin/runs/probe.gin",
        "--gin.synpro.preset.vocab_size=320",
        f"--gin.CHECKPOINT='{root / 'theta'}'",
        f"--gin.VOCABULARY='{vocab}'",
        f"--gin.REFERENCE=['{root / 'ref.jsonl'}']",
        f"--gin.PROBE_CORPUS=['{root / 'corpus.jsonl'}']",
        f"--gin.PROBE_OUT='{root / 'out'}'",
        "--gin.MAX_LEN=32",
        "--gin.synpro.ProbeConfig.steps=3",
        "--gin.synpro.ProbeConfig.batch_size=4",
        "--gin.synpro.probe.batch_size=8",
    ]
    return root, flags


def run(*args, **kw):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return subprocess.run(
        [sys.executable, "-m", "synpro_jax.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


@pytest.mark.slow
def test_probe_scores_every_document_and_reuses_its_work(setup):
    root, flags = setup
    out = run("probe", *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(root / "out" / "scores" / "influence.npz") as z:  # ids without pickle
        assert z["ids"].tolist() == [f"corpus.jsonl:{i}" for i in range(1, 31)]
        np.testing.assert_allclose(z["influence"], z["loss_before"] - z["loss_after"], atol=1e-5)
    assert (root / "out" / "finetuned" / "config.json").exists()
    assert "fresh Adam moments" in out.stdout  # an HF theta has no optimizer state
    provenance = json.loads((root / "out" / "finetuned" / "probe.json").read_text())
    assert provenance["theta"]["kind"] == "hf" and provenance["probe"]["config"]["steps"] == 3
    again = run("probe", *flags)
    assert again.returncode == 0 and "reusing theta'" in again.stdout
    changed = run("probe", *flags, "--gin.synpro.ProbeConfig.learning_rate=3e-4")
    assert changed.returncode != 0 and "config.learning_rate: 0.0001 then, 0.0003 now" in changed.stderr


@pytest.mark.slow
def test_influence_server_serves_the_probe(setup):
    root, flags = setup
    if not (root / "out" / "finetuned").exists():
        assert run("probe", *flags).returncode == 0
    port = 18000 + os.getpid() % 1000
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "synpro_jax.cli",
            "influence-server",
            *flags,
            f"--gin.synpro.influence_server.port={port}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert json.loads(r.read()) == {"status": "ok"}
                    break
            except OSError:
                assert time.time() < deadline
                time.sleep(0.5)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/get_influence",
            method="POST",
            data=json.dumps({"texts": ["alpha beta", "river mountain seven"]}).encode(),
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            body = json.loads(r.read())
        assert len(body["influence_scores"]) == 2 and len(body["loss_after"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
