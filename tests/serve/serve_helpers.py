"""A tiny random OLMo-2 HF directory with a SentencePiece vocabulary, and `synpro serve` run as a real process;
without JAX: a fake tokenizer and sampler, the app served by uvicorn in a thread, and raw HTTP over a socket."""

from __future__ import annotations

import json
import os
from pathlib import Path
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np

WORDS = "the a cat dog river stone light quickly under over green blue seven runs sleeps reads map city".split()


def make_model_dir(root: Path) -> tuple[Path, Path]:
    """(HF directory with sp.model inside, the sp.model path)."""
    import jax

    from synpro_jax import models
    from synpro_jax.data.vocab import train_sentencepiece
    from synpro_jax.models import hf

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(4, 12))).capitalize() + "." for _ in range(200)]
    model_dir = root / "tiny_olmo"
    cfg = models.get_preset("tiny").replace(vocab_size=320, max_seq_len=512)
    hf.save(cfg, models.init_params(cfg, jax.random.key(3)), model_dir)
    sp = train_sentencepiece(texts + ["<|system|> <|user|> <|assistant|> <|endoftext|>"], model_dir / "sp.model", 320)
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
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "JAX_DEFAULT_MATMUL_PRECISION": "highest",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        }
        self.log_path = log_path or model_dir.parent / f"serve_{self.port}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "synpro_jax.cli",
                "serve",
                "--model",
                str(model_dir),
                "--port",
                str(self.port),
                "--allow_fault_injection",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
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
        r = httpx.post(
            f"http://127.0.0.1:{self.port}/synpro/faults",
            json={"kind": kind, "count": count, "delay_s": delay_s},
            timeout=10,
        )
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


class CharVocab:
    """One token per character (ids = code points + 2); eos 1, pad 0."""

    eos_id, pad_id, vocab_size = 1, 0, 300

    def encode(self, text):
        return [ord(c) + 2 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 2) for i in ids)


class EchoSampler:
    """Each row answers its own prompt reversed, then eos if that fits the budget; can be told to fail."""

    def __init__(self):
        self.fail = False

    def generate(self, prompts, *, max_new_tokens, stream_ids, eos_id, **kw):
        if self.fail:
            raise RuntimeError("device lost")
        width = max(max_new_tokens)
        tokens, lengths, finished = np.zeros((len(prompts), width), int), [], []
        for r, (p, b) in enumerate(zip(prompts, max_new_tokens)):
            row = (list(reversed(p)) + [eos_id[0]])[:b]
            tokens[r, : len(row)] = row
            lengths.append(len(row))
            finished.append(row[-1] == eos_id[0])
        return SimpleNamespace(tokens=tokens, lengths=np.array(lengths), finished=np.array(finished))


def echo_engine(vocab=None, **settings):
    """An Engine over :class:`CharVocab` (or ``vocab``) and :class:`EchoSampler`: a 64-token context."""
    from synpro_jax.serve.server import Engine, ServeConfig

    settings = {"model_name": "echo", "batch_wait_s": 0.0, "batching": "static", **settings}
    return Engine(
        SimpleNamespace(max_seq_len=64, vocab_size=300), EchoSampler(), vocab or CharVocab(), ServeConfig(**settings)
    )


class ThreadServer:
    """An ASGI app on uvicorn (as ``synpro serve`` runs it) in a daemon thread on a free port: a real socket, no
    subprocess; a context manager."""

    def __init__(self, app):
        import uvicorn

        from synpro_jax.serve.server import uvicorn_options

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="on", **uvicorn_options())
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def raw_http(port: int, request: bytes, *, timeout_s: float = 10.0, then=None) -> tuple[int, dict, bytes]:
    """Send ``request`` bytes as they are, optionally call ``then(sock)`` (to send more or stall), and read one
    response: (status, lower-cased headers, body). ``timeout_s`` bounds every socket read: a server that does not
    answer raises ``TimeoutError`` (socket.timeout) instead of hanging the test."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        if then is not None:
            then(sock)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the server closed the connection without a full response: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        want = int(headers.get("content-length", -1))
        while want < 0 or len(body) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body[:want] if want >= 0 else body


def post_bytes(
    path: str,
    body: bytes,
    *,
    content_type: str | None = "application/json",
    content_length: int | None = None,
    extra: str = "",
) -> bytes:
    """A raw HTTP/1.1 POST: ``content_length`` may lie about ``body``'s size; ``extra``: more header lines."""
    length = len(body) if content_length is None else content_length
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return (head + extra + "\r\n").encode() + body


def json_error(body: bytes) -> dict:
    """The OpenAI error object of an error reply's body (fails the test on anything else)."""
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    return error
