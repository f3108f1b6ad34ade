"""Install synpro_jax on every worker of a TPU VM or pod slice: the checkout in ~/synpro_jax, installed with JAX's TPU
wheels in a Python 3.12 venv, ~/synpro_venv, that uv makes (the TPU runtimes ship Python 3.10; synpro_jax needs
3.11 or newer).

    python tpu/install.py --name synpro-v4 --zone us-central2-b --repo https://github.com/ORG/synpro_jax --ref main
    python tpu/install.py --name synpro-v4 --zone us-central2-b --scp_from .     # this checkout, copied as it is

Rerun it to move every worker to another ref (or to a fresh copy of LOCAL_DIR).
"""

import sys

from synpro_jax.cloud_tpu import gcloud


def main(argv=None) -> int:
    p = gcloud.parser(
        __file__,
        "Install synpro_jax on all workers of a TPU VM (git clone/update or scp, then a Python 3.12 venv made by uv).",
    )
    gcloud.add_install(p)
    args = p.parse_args(argv)
    gcloud.check(p, args)
    commands = gcloud.install(args.name, args.zone, args.project, args.repo, args.ref, args.scp_from)
    return gcloud.run_all(commands, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
