"""Install synpro_jax on every worker of a TPU VM or pod slice (~/synpro_jax, ~/synpro_venv).

    python tpu/install.py --name synpro-v4 --zone us-central2-b --repo https://github.com/ORG/synpro_jax --ref main
    python tpu/install.py --name synpro-v4 --zone us-central2-b --scp_from .     # this checkout, copied as it is

The command line of synpro_jax.cloud_tpu.install (its docstring and tpu/README.md say more), imported from the checkout
this script sits in: it needs no install, only Python's standard library and the Google Cloud CLI. Where synpro_jax
is installed, `python -m synpro_jax.cloud_tpu.install` is the same command.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's synpro_jax
from synpro_jax.cloud_tpu.install import main

if __name__ == "__main__":
    sys.exit(main())
