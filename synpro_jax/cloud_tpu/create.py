"""Create a Cloud TPU VM or pod slice.

    python tpu/create.py --name synpro-v5e --zone us-west4-a --accelerator_type v5litepod-8 --spot
    python tpu/create.py --name synpro-v4 --zone us-central2-b --accelerator_type v4-32 --dry_run
    python tpu/create.py --name synpro-v4 --zone us-central2-b --accelerator_type v4-32 --spot --queued

--queued requests it as a queued resource (gcloud compute tpus queued-resources create), which waits for capacity
in Google's queue: `gcloud compute tpus queued-resources describe NAME` shows its state, and tpu/delete.py --queued
deletes it.
"""

import sys

from synpro_jax.cloud_tpu import gcloud


def main(argv=None) -> int:
    p = gcloud.parser(
        __file__,
        "Create a TPU VM or pod slice (gcloud compute tpus tpu-vm create, or queued-resources create with --queued).",
    )
    gcloud.add_accelerator(p)
    args = p.parse_args(argv)
    gcloud.check(p, args)
    create = gcloud.queued_create if args.queued else gcloud.create
    command = create(args.name, args.zone, args.project, args.accelerator_type, args.version, gcloud.provisioning(args))
    return gcloud.run_all([command], args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
