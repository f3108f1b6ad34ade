"""Keep a job running on a Spot or preemptible TPU slice until it finishes.

    python tpu/babysit.py --name synpro-v4 --zone us-central2-b --accelerator_type v4-32 --spot \
        --repo https://github.com/ORG/synpro_jax --ref main -- synpro train --gin_file=...

(``python -m synpro_jax.cloud_tpu.babysit`` takes the same flags wherever synpro_jax is installed.)

Every --poll_s seconds it reads the slice's state (gcloud ... describe --format='value(state)') and, while the
slice is READY, with one ssh to worker 0, the job's exit status (~/synpro_logs/<run_name>.exit, written by
tpu/launch.py's command) and the age of its heartbeat (~/synpro_logs/<run_name>.heartbeat, which synpro jobs touch
at most once a minute in their long phases: steps, batches, chunks; synpro_jax/heartbeat.py).

- A slice that is PREEMPTED, TERMINATED or gone is deleted and created again, synpro_jax reinstalled and the same
  command launched. synpro jobs resume from their latest checkpoint, so launching the identical command is the
  resume.
- A job that exited 143 (SIGTERM, after saving) is launched again on the same slice at once.
- A job with no exit status whose heartbeat is older than --stale_s (a hung job; no heartbeat counts from the
  launch) is launched again: every launch first stops a copy still running on each worker.
- Any other failure is taken to be transient (an XLA or storage error, a lost host) and launched again after
  --backoff_s seconds, doubled for each failure in a row (at most an hour), except exit 2 (a configuration or
  usage error: synpro's CLI exits 2 on a bad flag or gin binding), 126 and 127 (the command cannot run), which
  the same command would hit again: it gives up on those at once.
- It stops when the job exits 0, and gives up after --max_restarts restarts (slices created plus launches again),
  or after --max_restarts failures in a row of the install or launch a slice needs (a bad --ref, no network).

With --queued the slice is a queued resource (gcloud compute tpus queued-resources): its state is read first.
WAITING_FOR_RESOURCES, ACCEPTED, CREATING and PROVISIONING (in the queue, or being provisioned), SUSPENDING and
DELETING are waited out; SUSPENDED (its node was preempted and deleted) and FAILED (not provisioned) are deleted
(--force, which deletes a node left) and requested again; ACTIVE means the node exists, and the node's own state
decides as above.

Start it after tpu/launch.py (a READY slice without an exit status is taken to be running the job), or on a slice
that does not exist yet: it creates one and launches the job itself.
"""

from __future__ import annotations

from collections.abc import Callable
import math
import shlex
import sys
import time

from synpro_jax.cloud_tpu import gcloud
from synpro_jax.exit_codes import EXIT_PREEMPTED
from synpro_jax.heartbeat import DEFAULT_INTERVAL_S as HEARTBEAT_INTERVAL_S

GONE = {None, "PREEMPTED", "TERMINATED", "SUSPENDED", "FAILED"}  # None: the slice (or queued resource) does not exist
# Exit statuses the same command would hit again: 2 is synpro's configuration or usage error (a bad flag or gin
# binding, a missing file: synpro_jax/cli.py), 126 and 127 are the shell's "cannot execute" and "command not found".
DETERMINISTIC = {2, 126, 127}
STALE_S = 1800.0
BACKOFF_S = 60.0
BACKOFF_CAP_S = 3600.0


def next_action(state: str | None, exit_code: int | None, stale: bool = False) -> str:
    """What to do given the slice's state (None if it does not exist), the job's exit status on worker 0 (None
    while it runs, or when it could not be read) and whether its heartbeat is older than --stale_s.

    "done" (exit 0); "give_up" (exit 2, 126 or 127: the same command would fail again); "recreate" (the slice is
    preempted, terminated or gone; a queued resource suspended or failed); "relaunch" (exit 143, or a stale
    heartbeat, on a READY slice); "retry" (any other failure on a READY slice: relaunch after a backoff); "wait"
    (the job runs, or the slice is in a passing state such as CREATING, RESTARTING, REPAIRING or, queued,
    WAITING_FOR_RESOURCES).
    """
    if exit_code == 0:
        return "done"
    if exit_code in DETERMINISTIC:
        return "give_up"
    if state in GONE:
        return "recreate"
    if state != "READY":
        return "wait"
    if exit_code == EXIT_PREEMPTED:
        return "relaunch"
    if exit_code is not None:
        return "retry"
    return "relaunch" if stale else "wait"


def backoff(failures: int, base_s: float) -> float:
    """Seconds to wait before relaunching after `failures` earlier failures in a row: base_s, doubled each time,
    at most an hour (or base_s, if that is more)."""
    return min(base_s * 2**failures, max(base_s, BACKOFF_CAP_S))


class GiveUp(Exception):
    """Stop babysitting; the message says why, in one line."""


class Babysitter:
    def __init__(
        self,
        args,
        command: list[str],
        runner: gcloud.Runner = gcloud.run,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.args, self.command, self.runner, self.sleep, self.clock = args, command, runner, sleep, clock
        self.log = log or (
            lambda line: print(f"[babysit {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)
        )
        # A namespace built elsewhere (synpro sweep --launcher=tpu) may lack the babysitter's own flags.
        self.queued = getattr(args, "queued", False)
        self.stale_s = getattr(args, "stale_s", STALE_S)
        self.backoff_s = getattr(args, "backoff_s", BACKOFF_S)
        self.exists = False  # whether there is a slice (or queued resource) to delete before creating one
        self.owed_failures = 0  # install/launch steps that failed in a row (a bad --ref, no network to the workers)
        # A job launched before the babysitter started gets the same grace as one it launched itself.
        self.launched_at = clock()

    def _where(self) -> tuple[str, str, str | None]:
        return self.args.name, self.args.zone, self.args.project

    def create_commands(self) -> list[list[str]]:
        a = self.args
        create = gcloud.queued_create if self.queued else gcloud.create
        return [create(*self._where(), a.accelerator_type, a.version, gcloud.provisioning(a))]

    def delete_command(self) -> list[str]:
        return (gcloud.queued_delete if self.queued else gcloud.delete)(*self._where(), quiet=True)

    def install_commands(self) -> list[list[str]]:
        a = self.args
        return gcloud.install(*self._where(), a.repo, a.ref, a.scp_from)

    def launch_commands(self) -> list[list[str]]:
        return [gcloud.launch(*self._where(), self.command, self.args.run_name)]

    def _describe(self, argv: list[str]) -> tuple[bool, str | None]:
        """(found, state): (False, None) if the resource does not exist; (True, "UNKNOWN") when gcloud failed
        otherwise (a network or auth error must not look like a vanished slice, which would be deleted)."""
        result = self.runner(argv, capture=True)
        if result.returncode == 0:
            return True, result.stdout.strip() or "UNKNOWN"
        if "NOT_FOUND" in result.stderr or "was not found" in result.stderr:
            return False, None
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        self.log(f"describe failed ({last}); state unknown")
        return True, "UNKNOWN"

    def state(self) -> str | None:
        """The slice's state (None if it does not exist); with --queued, the queued resource's state unless it is
        ACTIVE, then its node's (ACTIVE again while the node cannot be seen: the queued resource says what
        happened to it soon after)."""
        if not self.queued:
            self.exists, state = self._describe(gcloud.describe(*self._where()))
            return state
        self.exists, state = self._describe(gcloud.queued_describe(*self._where()))
        if state != "ACTIVE":
            return state
        found, node = self._describe(gcloud.describe(*self._where()))
        return node if found else "ACTIVE"

    def status(self) -> tuple[int | None, float | None]:
        """(exit status, heartbeat age in seconds) on worker 0: exit None while the job runs; age math.inf when there
        is no heartbeat file, None when the ssh failed (nothing is known, so nothing is stale)."""
        result = self.runner(gcloud.read_status(*self._where(), self.args.run_name), capture=True)
        if result.returncode != 0:
            return None, None
        fields = dict(line.partition("=")[::2] for line in result.stdout.splitlines() if "=" in line)
        try:
            code = int(fields["exit"]) if fields.get("exit", "").strip() else None
            age = float(fields["heartbeat_age"]) if fields.get("heartbeat_age", "").strip() else math.inf
        except (KeyError, ValueError):
            return None, None
        return code, age

    def since_launch(self) -> float:
        return self.clock() - self.launched_at

    def stale(self, age: float | None) -> bool:
        """Whether the job has shown no sign of life for --stale_s: no heartbeat since the launch counts from the
        launch (a job just launched has none yet). --stale_s 0 turns the check off."""
        if age is None or self.stale_s <= 0:
            return False
        return min(age, self.since_launch()) > self.stale_s

    def _run(self, commands: list[list[str]]) -> list[list[str]]:
        """Runs commands in order until one fails; returns those still to run (the failed one first)."""
        for i, argv in enumerate(commands):
            self.log(f"run: {shlex.join(argv)}")
            if self.runner(argv).returncode != 0:
                self.log("failed")
                return commands[i:]
            self.log("ok")
        self.launched_at = self.clock()  # the heartbeat's grace counts from here
        return []

    def _run_owed(self, commands: list[list[str]]) -> list[list[str]]:
        """_run for install and launch steps, which a slice that exists needs: their failures in a row (any step
        that succeeds starts the count again) are counted, and after --max_restarts of them (at least 1) the
        babysitter gives up (GiveUp): a step that always fails (a bad --ref, a repo or network the workers cannot
        reach) would otherwise be retried every poll forever."""
        left = self._run(commands)
        if len(left) < len(commands):
            self.owed_failures = 0
        if not left:
            return left
        self.owed_failures += 1
        if self.owed_failures >= max(1, self.args.max_restarts):
            raise GiveUp(
                f"giving up after {self.owed_failures} failures in a row (--max_restarts="
                f"{self.args.max_restarts}) of: {shlex.join(left[0])}"
            )
        self.log(f"failure {self.owed_failures} in a row; retrying after the next poll")
        return left

    def run(self) -> int:
        try:
            return self._loop()
        except GiveUp as e:
            self.log(str(e))
            return 1

    def _loop(self) -> int:
        a = self.args
        restarts = failures = 0  # failures: transient job failures in a row, for the backoff
        owed: list[list[str]] = []  # install/launch steps a READY slice still needs (one failed, or not run)
        while True:
            state = self.state()
            if owed and state == "READY":
                owed = self._run_owed(owed)
                self.sleep(a.poll_s)
                continue
            code, age = self.status() if state == "READY" else (None, None)
            stale = self.stale(age)
            action = next_action(state, code, stale)
            beat = "" if age is None else " heartbeat=none" if math.isinf(age) else f" heartbeat={age:.0f}s"
            self.log(f"state={state} exit={code}{beat} -> {action}")
            if action == "done":
                return 0
            if action == "give_up":
                self.log(
                    f"the job exited {code}: a configuration or usage error (or a command that cannot run) "
                    f"that the same command would hit again; see ~/synpro_logs/{a.run_name}.log"
                )
                return 1
            if action == "wait":
                if age is not None and age < self.since_launch():
                    failures = 0  # it has stepped since its launch
            elif restarts >= a.max_restarts:
                self.log(f"giving up after --max_restarts={a.max_restarts} restarts")
                return 1
            elif action in ("relaunch", "retry"):
                if action == "retry":
                    delay = backoff(failures, self.backoff_s)
                    failures += 1
                    self.log(f"the job exited {code} (failure {failures} in a row); launching it again in {delay:g} s")
                    self.sleep(delay)
                elif stale:
                    self.log(
                        f"no heartbeat for over --stale_s={self.stale_s:g} s: the job is taken to be hung; "
                        "the launch stops it and starts it again"
                    )
                restarts += 1
                owed = self._run_owed(self.launch_commands())
            else:  # recreate
                # Owed from here on: a create that gcloud reports failed (a timeout) may still bring the slice
                # up, and a new slice needs both.
                owed = self.install_commands() + self.launch_commands()
                delete = [self.delete_command()] if self.exists else []
                # A failed create (no Spot capacity, most often) is retried after the next poll and not
                # counted: only slices actually created count as restarts.
                if self._run(delete + self.create_commands()):
                    self.log("retrying after the next poll")
                else:
                    restarts += 1
                    # A queued resource is only in the queue now: the owed steps run once its node is READY.
                    if not self.queued:
                        owed = self._run_owed(owed)
            self.sleep(a.poll_s)


def main(
    argv=None,
    runner: gcloud.Runner = gcloud.run,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    p = gcloud.parser(__file__, "Recreate a preempted TPU slice, reinstall and relaunch the same job until it exits 0.")
    gcloud.add_accelerator(p)
    gcloud.add_install(p)
    gcloud.add_run_name(p)
    p.add_argument("--poll_s", type=float, default=60.0, help="seconds between checks (default 60)")
    p.add_argument(
        "--max_restarts",
        type=int,
        default=20,
        help="slices created plus jobs launched again before giving up (default 20); a failed create "
        "(no capacity) is retried every poll without counting; this many install or launch "
        "failures in a row give up too",
    )
    p.add_argument(
        "--stale_s",
        type=float,
        default=STALE_S,
        help=f"launch a job again whose heartbeat is older than this (default {STALE_S:g}; 0: never; "
        f"else at least {2 * HEARTBEAT_INTERVAL_S:g}, twice the heartbeat interval), longer than any "
        "phase without a beat (compilation, a checkpoint, a barrier). synpro train, probe, grpo, "
        "synthesize, eval and loop beat; other commands do not, so give them 0",
    )
    p.add_argument(
        "--backoff_s",
        type=float,
        default=BACKOFF_S,
        help=f"seconds before launching a failed job again (default {BACKOFF_S:g}), doubled for each "
        "failure in a row, at most an hour",
    )
    args, command = gcloud.parse_with_command(p, sys.argv[1:] if argv is None else argv)
    gcloud.check(p, args)
    if args.poll_s <= 0:
        p.error(f"--poll_s: {args.poll_s} must be positive")
    if args.max_restarts < 0:
        p.error(f"--max_restarts: {args.max_restarts} must be at least 0")
    if args.stale_s < 0:
        p.error(f"--stale_s: {args.stale_s} must be at least 0 (0 turns the heartbeat check off)")
    if 0 < args.stale_s < 2 * HEARTBEAT_INTERVAL_S:
        p.error(
            f"--stale_s: {args.stale_s:g} is under twice the heartbeat interval ({HEARTBEAT_INTERVAL_S:g} s: a "
            f"job touches its heartbeat at most that often), so a healthy job would look hung; give at least "
            f"{2 * HEARTBEAT_INTERVAL_S:g}, or 0 to turn the check off"
        )
    if args.backoff_s < 0:
        p.error(f"--backoff_s: {args.backoff_s} must be at least 0")
    sitter = Babysitter(args, command, runner, sleep, clock=clock)
    if args.dry_run:  # one recreation cycle
        cycle = sitter.create_commands() + sitter.install_commands() + sitter.launch_commands()
        return gcloud.run_all(cycle, dry_run=True)
    return sitter.run()


if __name__ == "__main__":
    sys.exit(main())
