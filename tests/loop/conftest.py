"""The tiny SynPro workspace the loop tests share (one per test process; its JAX compilation cache too)."""

from pathlib import Path
import sys

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import loop_job  # noqa: E402


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    return loop_job.make_workspace(tmp_path_factory.mktemp("loop_ws"))
