"""The exit codes synpro jobs end with, for supervisors (tpu/babysit.py, ``synpro sweep``, a cluster scheduler).

0 is done and 2 a configuration error (argparse's convention); the others below say how to go on.
"""

EXIT_PREEMPTED = 143  # 128 + SIGTERM: the job saved its progress and stopped; rerun the same command to resume
EXIT_STALLED = 3  # GRPO stopped because no group carried a learning signal (rl/trainer.py's GRPOStalled)
