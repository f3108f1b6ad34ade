"""Run a command (a synpro job) on every worker of a TPU VM or pod slice at once, inside ~/synpro_jax.

    python tpu/launch.py --name synpro-v4 --zone us-central2-b -- synpro train --gin_file=...

The command line of synpro_jax.cloud_tpu.launch (its docstring and tpu/README.md say more), imported from the checkout
this script sits in: it needs no install, only Python's standard library and the Google Cloud CLI. Where synpro_jax
is installed, `python -m synpro_jax.cloud_tpu.launch` is the same command.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's synpro_jax
from synpro_jax.cloud_tpu.launch import main

if __name__ == "__main__":
    sys.exit(main())
