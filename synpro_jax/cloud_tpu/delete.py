"""Delete a Cloud TPU VM or pod slice (its disks and anything on them go with it).

    python tpu/delete.py --name synpro-v4 --zone us-central2-b [--yes]

--queued deletes a queued resource (tpu/create.py --queued) with its node.
"""

import sys

from synpro_jax.cloud_tpu import gcloud


def main(argv=None) -> int:
    p = gcloud.parser(__file__, "Delete a TPU VM or pod slice (gcloud compute tpus tpu-vm delete).")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (gcloud --quiet)")
    p.add_argument(
        "--queued",
        action="store_true",
        help="delete the queued resource NAME and its node (queued-resources delete --force)",
    )
    args = p.parse_args(argv)
    gcloud.check(p, args)
    delete = gcloud.queued_delete if args.queued else gcloud.delete
    return gcloud.run_all([delete(args.name, args.zone, args.project, quiet=args.yes)], args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
