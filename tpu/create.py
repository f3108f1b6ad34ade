"""Create a Cloud TPU VM or pod slice.

    python tpu/create.py --name synpro-v5e --zone us-west4-a --accelerator_type v5litepod-8 --spot
    python tpu/create.py --name synpro-v4 --zone us-central2-b --accelerator_type v4-32 --spot --queued

The command line of synpro_jax.cloud_tpu.create (its docstring and tpu/README.md say more), imported from the checkout
this script sits in: it needs no install, only Python's standard library and the Google Cloud CLI. Where synpro_jax
is installed, `python -m synpro_jax.cloud_tpu.create` is the same command.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's synpro_jax
from synpro_jax.cloud_tpu.create import main

if __name__ == "__main__":
    sys.exit(main())
