"""Keep a job running on a Spot or preemptible TPU slice until it finishes.

    python tpu/babysit.py --name synpro-v4 --zone us-central2-b --accelerator_type v4-32 --spot \
        --repo https://github.com/ORG/synpro_jax --ref main -- synpro train --gin_file=...

Every --poll_s seconds it reads the slice's state (gcloud ... describe --format='value(state)') and, while the
slice is READY, the job's exit status on worker 0 (~/synpro_logs/<run_name>.exit, written by tpu/launch.py's
command). A slice that is PREEMPTED, TERMINATED or gone is deleted and created again, synpro_jax reinstalled and
the same command launched; a job that exited 143 (SIGTERM, after saving) is launched again on the same slice.
synpro jobs resume from their latest checkpoint, so launching the identical command is the resume. It stops when
the job exits 0, and gives up on any other exit status or after --max_restarts restarts.

Start it after tpu/launch.py (a READY slice without an exit status is taken to be running the job), or on a slice
that does not exist yet: it creates one and launches the job itself.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gcloud.py beside this file, from any cwd
import gcloud  # noqa: E402

GONE = {None, "PREEMPTED", "TERMINATED"}  # None: the slice does not exist


def next_action(state: str | None, exit_code: int | None) -> str:
    """What to do given the slice's state (None if it does not exist) and the job's exit status on worker 0
    (None while it runs, or when it could not be read).

    "done" (exit 0); "give_up" (any failure but 143: the same command would fail again); "recreate" (the slice
    is preempted, terminated or gone); "relaunch" (exit 143 on a READY slice); "wait" (the job runs, or the slice
    is in a passing state such as CREATING, RESTARTING or REPAIRING).
    """
    if exit_code == 0:
        return "done"
    if exit_code is not None and exit_code != gcloud.EXIT_PREEMPTED:
        return "give_up"
    if state in GONE:
        return "recreate"
    if state == "READY" and exit_code == gcloud.EXIT_PREEMPTED:
        return "relaunch"
    return "wait"


class Babysitter:
    def __init__(self, args, command: list[str], runner: gcloud.Runner = gcloud.run,
                 sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] | None = None):
        self.args, self.command, self.runner, self.sleep = args, command, runner, sleep
        self.log = log or (lambda line: print(f"[babysit {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr,
                                              flush=True))

    def _where(self) -> tuple[str, str, str | None]:
        return self.args.name, self.args.zone, self.args.project

    def create_commands(self) -> list[list[str]]:
        a = self.args
        return [gcloud.create(*self._where(), a.accelerator_type, a.version, gcloud.provisioning(a))]

    def install_commands(self) -> list[list[str]]:
        a = self.args
        return gcloud.install(*self._where(), a.repo, a.ref, a.scp_from)

    def launch_commands(self) -> list[list[str]]:
        return [gcloud.launch(*self._where(), self.command, self.args.run_name)]

    def state(self) -> str | None:
        """The slice's state; None if it does not exist; "UNKNOWN" when gcloud failed otherwise (a network or
        auth error must not look like a vanished slice, which would be deleted)."""
        result = self.runner(gcloud.describe(*self._where()), capture=True)
        if result.returncode == 0:
            return result.stdout.strip() or "UNKNOWN"
        if "NOT_FOUND" in result.stderr or "was not found" in result.stderr:
            return None
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        self.log(f"describe failed ({last}); state unknown")
        return "UNKNOWN"

    def exit_code(self) -> int | None:
        result = self.runner(gcloud.read_exit(*self._where(), self.args.run_name), capture=True)
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            return None
        try:
            return int(lines[-1])
        except ValueError:
            return None

    def _run(self, commands: list[list[str]]) -> list[list[str]]:
        """Runs commands in order until one fails; returns those still to run (the failed one first)."""
        for i, argv in enumerate(commands):
            self.log(f"run: {shlex.join(argv)}")
            if self.runner(argv).returncode != 0:
                self.log("failed; retrying after the next poll")
                return commands[i:]
            self.log("ok")
        return []

    def run(self) -> int:
        restarts = 0
        owed: list[list[str]] = []  # install/launch steps a READY slice still needs (one failed, or not run)
        while True:
            state = self.state()
            if owed and state == "READY":
                owed = self._run(owed)
                self.sleep(self.args.poll_s)
                continue
            code = self.exit_code() if state == "READY" else None
            action = next_action(state, code)
            self.log(f"state={state} exit={code} -> {action}")
            if action == "done":
                return 0
            if action == "give_up":
                self.log(f"the job failed with exit status {code}; see ~/synpro_logs/{self.args.run_name}.log")
                return 1
            if action in ("recreate", "relaunch"):
                if restarts >= self.args.max_restarts:
                    self.log(f"giving up after --max_restarts={self.args.max_restarts} restarts")
                    return 1
                if action == "relaunch":
                    restarts += 1
                    owed = self._run(self.launch_commands())
                else:
                    # Owed from here on: a create that gcloud reports failed (a timeout) may still bring the slice
                    # up, and a new slice needs both.
                    owed = self.install_commands() + self.launch_commands()
                    delete = [] if state is None else [gcloud.delete(*self._where(), quiet=True)]
                    # A failed create (no Spot capacity, most often) is retried after the next poll and not
                    # counted: only slices actually created count as restarts.
                    if not self._run(delete + self.create_commands()):
                        restarts += 1
                        owed = self._run(owed)
            self.sleep(self.args.poll_s)


def main(argv=None, runner: gcloud.Runner = gcloud.run, sleep: Callable[[float], None] = time.sleep) -> int:
    p = gcloud.parser(__file__, "Recreate a preempted TPU slice, reinstall and relaunch the same job until it "
                                "exits 0.")
    gcloud.add_accelerator(p)
    gcloud.add_install(p)
    gcloud.add_run_name(p)
    p.add_argument("--poll_s", type=float, default=60.0, help="seconds between checks (default 60)")
    p.add_argument("--max_restarts", type=int, default=20,
                   help="slices created plus jobs relaunched before giving up (default 20); a failed create "
                        "(no capacity) is retried every poll without counting")
    args, command = gcloud.parse_with_command(p, sys.argv[1:] if argv is None else argv)
    gcloud.check(p, args)
    if args.poll_s <= 0:
        p.error(f"--poll_s: {args.poll_s} must be positive")
    if args.max_restarts < 0:
        p.error(f"--max_restarts: {args.max_restarts} must be at least 0")
    sitter = Babysitter(args, command, runner, sleep)
    if args.dry_run:  # one recreation cycle
        cycle = sitter.create_commands() + sitter.install_commands() + sitter.launch_commands()
        return gcloud.run_all(cycle, dry_run=True)
    return sitter.run()


if __name__ == "__main__":
    sys.exit(main())
