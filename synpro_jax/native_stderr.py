"""Native libraries' start-up chatter (TensorFlow's oneDNN/CUDA probes, libtpu's worker search) written straight to
file descriptor 2, where Python's logging levels cannot reach it."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def held():
    """Hold everything written to fd 2 inside the block; drop it if the block succeeds, replay it if it raises."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
