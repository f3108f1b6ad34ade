"""Run a command (a synpro job) on every worker of a TPU VM or pod slice at once, inside ~/synpro_jax.

    python tpu/launch.py --name synpro-v4 --zone us-central2-b -- \
        synpro train --gin_file=gin/experiments/olmo_400m_dclm.gin --gin.OUT_DIR='"gs://BUCKET/runs/olmo_400m"'

Each host runs the command with ~/synpro_venv/bin (tpu/install.py) first on PATH, appends the job's output to
~/synpro_logs/<run_name>.log and writes its exit status to ~/synpro_logs/<run_name>.exit when it ends. A copy of
the run still going on a host is stopped first (SIGTERM to its process group, kept in <run_name>.pid; SIGKILL after
two minutes), so launching again never leaves two copies. The job gets
SYNPRO_HEARTBEAT=~/synpro_logs/<run_name>.heartbeat, the file synpro jobs touch as they step (tpu/babysit.py
--stale_s reads its age). By default the job is detached and the ssh returns at once; --attach streams the output
and returns the job's exit status.
"""

import sys

from synpro_jax.cloud_tpu import gcloud


def main(argv=None) -> int:
    p = gcloud.parser(
        __file__, "Run `-- COMMAND ...` on all workers of a TPU VM, logged to ~/synpro_logs/<run_name>.log."
    )
    gcloud.add_run_name(p)
    p.add_argument("--attach", action="store_true", help="stay attached: stream the output, wait for the job")
    args, command = gcloud.parse_with_command(p, sys.argv[1:] if argv is None else argv)
    gcloud.check(p, args)
    ssh = gcloud.launch(args.name, args.zone, args.project, command, args.run_name, args.attach)
    return gcloud.run_all([ssh], args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
