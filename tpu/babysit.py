"""Keep a job running on a Spot or preemptible TPU slice until it finishes.

    python tpu/babysit.py --name synpro-v4 --zone us-central2-b --accelerator_type v4-32 --spot \\
        --repo https://github.com/ORG/synpro_jax --ref main -- synpro train --gin_file=...

The command line of synpro_jax.cloud_tpu.babysit (its docstring and tpu/README.md say more), imported from the checkout
this script sits in: it needs no install, only Python's standard library and the Google Cloud CLI. Where synpro_jax
is installed, `python -m synpro_jax.cloud_tpu.babysit` is the same command.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's synpro_jax
from synpro_jax.cloud_tpu.babysit import main

if __name__ == "__main__":
    sys.exit(main())
