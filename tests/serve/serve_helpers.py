"""A tiny random OLMo-2 HF directory with a SentencePiece vocabulary, and `synpro serve` run as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jax
import numpy as np

from synpro_jax import models
from synpro_jax.data.vocab import train_sentencepiece
from synpro_jax.models import hf

WORDS = "the a cat dog river stone light quickly under over green blue seven runs sleeps reads map city".split()


def make_model_dir(root: Path) -> tuple[Path, Path]:
    """(HF directory with sp.model inside, the sp.model path)."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(4, 12))).capitalize() + "." for _ in range(200)]
    model_dir = root / "tiny_olmo"
    cfg = models.get_preset("tiny").replace(vocab_size=320, max_seq_len=512)
    hf.save(cfg, models.init_params(cfg, jax.random.key(3)), model_dir)
    sp = train_sentencepiece(texts + ["<|system|> <|user|> <|assistant|> <|endoftext|>"], model_dir / "sp.model",
                             320)
    return model_dir, sp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``python -m synpro_jax.cli serve`` on a free port; ``url`` is its /v1 base."""

    def __init__(self, model_dir: Path, *args: str, log_path: Path | None = None, ready_s: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DEFAULT_MATMUL_PRECISION": "highest",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
        self.log_path = log_path or model_dir.parent / f"serve_{self.port}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "synpro_jax.cli", "serve", "--model", str(model_dir), "--port", str(self.port),
             "--allow_fault_injection", *args], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + ready_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"synpro serve exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"synpro serve did not come up in {ready_s}s: {self.log()}")
            time.sleep(0.3)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()[-3000:]

    def fault(self, kind: str, count: int = 1, delay_s: float = 1.0) -> None:
        r = httpx.post(f"http://127.0.0.1:{self.port}/synpro/faults",
                       json={"kind": kind, "count": count, "delay_s": delay_s}, timeout=10)
        assert r.status_code == 200, r.text

    def clear_faults(self) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/synpro/faults", json={"clear": True}, timeout=10)

    def stats(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.port}/synpro/stats", timeout=10).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
