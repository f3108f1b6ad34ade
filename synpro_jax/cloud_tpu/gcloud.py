"""What the tpu/ scripts share: argument checks, the gcloud command lines they build, and the runner that runs them.

Every command is built as an argv list, so `--dry_run` can print exactly what would run (shlex.join) and tests
can compare it; the scripts never go through a local shell. Standard library only, like the rest of
synpro_jax.cloud_tpu: the scripts run with a bare Python beside the Google Cloud CLI.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import os
import re
import shlex
import subprocess
import sys
from typing import NamedTuple

TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")
QUEUED = ("gcloud", "compute", "tpus", "queued-resources")
ACCELERATOR_RE = re.compile(r"^(v2|v3|v4|v5litepod|v5p|v6e)-\d+$")
# Cloud resource names (RFC 1035): lowercase letters, digits and hyphens, a letter first, no hyphen last.
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a file name in ~/synpro_logs on every host
# The runtime ("software version") Google lists for JAX per generation (cloud.google.com/tpu/docs/runtimes).
DEFAULT_VERSIONS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
REMOTE_DIR = "synpro_jax"  # the checkout on every worker, relative to the home directory
VENV_DIR = "synpro_venv"  # the Python >= 3.11 environment tpu/install.py makes on every worker
LOG_DIR = "synpro_logs"  # <run>.log, .exit, .pid and .heartbeat on every worker, relative to the home directory
PYTHON = "3.12"  # the venv's Python (uv fetches a managed CPython): jax>=0.7 needs >= 3.11, the runtimes ship 3.10
JAX = "jax[tpu]"
KILL_WAIT_S = 120  # how long a launch lets a running copy save after SIGTERM before it SIGKILLs it


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (argparse prints the usage first), still with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser(script: str, description: str) -> Parser:
    """The flags every script takes; `script` is its __file__ (errors start with its name)."""
    p = Parser(prog=os.path.basename(script), description=description)
    p.add_argument("--name", required=True, help="the TPU VM (or pod slice) name")
    p.add_argument("--zone", required=True, help="its zone, e.g. us-west4-a (v5e) or us-central2-b (v4)")
    p.add_argument("--project", help="the Google Cloud project (default: gcloud's configured project)")
    p.add_argument("--dry_run", action="store_true", help="print the gcloud commands, one per line; run nothing")
    return p


def add_accelerator(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accelerator_type", required=True, help="e.g. v5litepod-8 (v5e, 1 host) or v4-32 (4 hosts)")
    p.add_argument(
        "--version",
        help="TPU runtime; default: Google's JAX runtime for the generation "
        "(v5litepod: v2-alpha-tpuv5-lite, v4: tpu-ubuntu2204-base, ...)",
    )
    kind = p.add_mutually_exclusive_group()  # one provisioning model per slice
    kind.add_argument("--spot", action="store_true", help="a Spot slice (preemptible, no time limit)")
    kind.add_argument("--preemptible", action="store_true", help="a preemptible slice (at most 24 hours)")
    kind.add_argument("--reserved", action="store_true", help="from the project's reserved capacity")
    p.add_argument(
        "--queued",
        action="store_true",
        help="request the slice as a queued resource (gcloud compute tpus queued-resources create), which "
        "waits in Google's queue for capacity instead of failing; with --spot, --reserved or neither",
    )


def add_install(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", help="git URL (or a path on the workers) to clone synpro_jax from")
    p.add_argument("--ref", help="branch, tag or commit to check out (default: the remote's HEAD)")
    p.add_argument("--scp_from", metavar="LOCAL_DIR", help="copy this local checkout to the workers instead of git")


def add_run_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run_name", help="names ~/synpro_logs/<run_name>.log and .exit on every host (default: --name)")


def parse_with_command(p: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the script's flags, the command after the first `--`). A command given without `--` fails naming `--`
    rather than as arguments argparse does not know."""
    argv = list(argv)
    i = argv.index("--") if "--" in argv else len(argv)
    args, unknown = p.parse_known_args(argv[:i])
    command = argv[i + 1 :]
    if unknown and i < len(argv):
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not command:
        p.error("--: missing the command to run after `--` (e.g. -- synpro train --gin_file=FILE)")
    return args, command


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad input fails here, in one line naming the flag, before any gcloud command runs (exit status 2)."""
    if not NAME_RE.match(args.name):
        p.error(
            f"--name: {args.name!r} is not a valid TPU name (lowercase letters, digits and hyphens, starting "
            "with a letter, not ending with a hyphen, at most 63 characters)"
        )
    if not args.zone.strip():
        p.error("--zone: empty")
    if args.project is not None and not args.project.strip():
        p.error("--project: empty")
    if getattr(args, "accelerator_type", None) is not None and not ACCELERATOR_RE.match(args.accelerator_type):
        hint = " (gcloud calls v5e v5litepod)" if args.accelerator_type.startswith("v5e-") else ""
        p.error(
            f"--accelerator_type: {args.accelerator_type!r} is not a TPU type such as v5litepod-8, v4-32, "
            f"v5p-8 or v6e-8 (pattern {ACCELERATOR_RE.pattern}){hint}"
        )
    if getattr(args, "queued", False) and getattr(args, "preemptible", False):
        p.error("--queued: queued resources take --spot or --reserved (or neither), not --preemptible")
    if hasattr(args, "scp_from"):
        if args.scp_from is not None and args.repo is not None:
            p.error("--scp_from: give either --repo or --scp_from, not both")
        if args.scp_from is None and args.repo is None:
            p.error("--repo: say where the workers get synpro_jax: --repo GIT_URL or --scp_from LOCAL_DIR")
        if args.scp_from is not None and not os.path.isdir(args.scp_from):
            p.error(f"--scp_from: {args.scp_from!r} is not a local directory")
        if args.scp_from is not None and args.ref is not None:
            p.error("--ref: applies to --repo; --scp_from copies LOCAL_DIR as it is")
    if hasattr(args, "run_name"):
        args.run_name = args.run_name or args.name
        if not RUN_NAME_RE.match(args.run_name):
            p.error(f"--run_name: {args.run_name!r} must be letters, digits, '.', '_' or '-' (it names log files)")


SCRIPT_FLAGS = (
    "name",
    "zone",
    "project",
    "accelerator_type",
    "version",
    "spot",
    "preemptible",
    "reserved",
    "queued",
    "repo",
    "ref",
    "scp_from",
    "run_name",
)


def script_flags(args: argparse.Namespace) -> list[str]:
    """The flags that give `args` to a script again (unset ones left out): how a caller that built its own
    namespace (synpro sweep --launcher=tpu) prints the babysit.py line for a slice it launched."""
    flags = []
    for key in SCRIPT_FLAGS:
        value = getattr(args, key, None)
        if value is True:
            flags.append(f"--{key}")
        elif value not in (None, False) and not (key == "run_name" and value == args.name):
            flags += [f"--{key}", str(value)]
    return flags


def where(zone: str, project: str | None) -> list[str]:
    return [f"--zone={zone}"] + ([f"--project={project}"] if project else [])


def create(
    name: str,
    zone: str,
    project: str | None,
    accelerator_type: str,
    version: str | None = None,
    provisioning: str | None = None,
) -> list[str]:
    """`provisioning`: None (on demand), "spot", "preemptible" or "reserved"."""
    version = version or DEFAULT_VERSIONS[accelerator_type.split("-")[0]]
    return [
        *TPU_VM,
        "create",
        name,
        *where(zone, project),
        f"--accelerator-type={accelerator_type}",
        f"--version={version}",
    ] + ([f"--{provisioning}"] if provisioning else [])


def queued_create(
    name: str,
    zone: str,
    project: str | None,
    accelerator_type: str,
    version: str | None = None,
    provisioning: str | None = None,
) -> list[str]:
    """A queued resource named `name` whose node is `name` too; `provisioning`: None, "spot" or "reserved"."""
    version = version or DEFAULT_VERSIONS[accelerator_type.split("-")[0]]
    return [
        *QUEUED,
        "create",
        name,
        f"--node-id={name}",
        *where(zone, project),
        f"--accelerator-type={accelerator_type}",
        f"--runtime-version={version}",
        *([f"--{provisioning}"] if provisioning else []),
    ]


def queued_delete(name: str, zone: str, project: str | None, quiet: bool = False) -> list[str]:
    """--force deletes the node first: without it a queued resource whose node exists is not deleted."""
    return [*QUEUED, "delete", name, *where(zone, project), "--force"] + (["--quiet"] if quiet else [])


def queued_describe(name: str, zone: str, project: str | None) -> list[str]:
    return [*QUEUED, "describe", name, *where(zone, project), "--format=value(state.state)"]


def provisioning(args: argparse.Namespace) -> str | None:
    return next((kind for kind in ("spot", "preemptible", "reserved") if getattr(args, kind)), None)


def delete(name: str, zone: str, project: str | None, quiet: bool = False) -> list[str]:
    return [*TPU_VM, "delete", name, *where(zone, project)] + (["--quiet"] if quiet else [])


def describe(name: str, zone: str, project: str | None) -> list[str]:
    return [*TPU_VM, "describe", name, *where(zone, project), "--format=value(state)"]


def ssh(name: str, zone: str, project: str | None, command: str, worker: str = "all") -> list[str]:
    return [*TPU_VM, "ssh", name, *where(zone, project), f"--worker={worker}", f"--command={command}"]


def scp(local_dir: str, name: str, zone: str, project: str | None) -> list[str]:
    return [*TPU_VM, "scp", "--recurse", local_dir, f"{name}:~/{REMOTE_DIR}", "--worker=all", *where(zone, project)]


# The remote side runs in the workers' login shell (bash). Paths use "$HOME" rather than ~, which a shell does not
# expand inside quotes.
def _home(path: str) -> str:
    """A path under the remote home directory, quoted for the remote shell."""
    return f'"$HOME/{path}"'


_HOME_DIR = _home(REMOTE_DIR)
_VENV = _home(VENV_DIR)
_VENV_PYTHON = _home(f"{VENV_DIR}/bin/python")


def _venv_steps(python: str, jax: str) -> list[str]:
    """Make ~/synpro_venv with a Python >= 3.11 and install jax[tpu] and the checkout (the working directory) in it.

    The stock TPU runtimes ship Python 3.10, and jax>=0.7 needs 3.11. uv (a pip-installable binary) makes the venv
    with a managed CPython it downloads, as MaxText's install does (uv venv --python 3.12, then uv pip install -e
    .[tpu]); levanter's infra/helpers/setup-tpu-vm.sh gets its newer Python from the deadsnakes PPA instead. Without
    uv (no pip, no network to PyPI) the newest python3.1x >= 3.11 with venv on the worker makes it, trying
    python3.13, python3.12 and python3.11 in that order.
    """
    q_python = shlex.quote(python)
    candidates = [q_python] if "/" in python else []  # an interpreter named by its path (a test's) is tried first
    versions = {"3.13", "3.12", "3.11"} | ({python} if re.fullmatch(r"3\.\d+", python) else set())
    candidates += [f"python{v}" for v in sorted(versions, key=lambda v: int(v.split(".")[1]), reverse=True)]
    fallback = [
        (
            f"py=; for c in {' '.join(candidates)}; do "
            """if "$c" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then """
            "py=$c; break; fi; done"
        ),
        (
            '[ -n "$py" ] || { echo "install: could not install uv, and this worker has no Python >= 3.11 with venv" '
            ">&2; exit 1; }"
        ),
        f'"$py" -m venv {_VENV}',
        f'venv_install() {{ {_VENV_PYTHON} -m pip install "$@"; }}',
    ]
    return [
        # --user: the system Python's site-packages is root's; the binary lands in ~/.local/bin, found by -m uv.
        (
            f"if python3 -m pip install --user -U uv && python3 -m uv venv --allow-existing --python {q_python} "
            f'{_VENV}; then venv_install() {{ python3 -m uv pip install --python {_VENV_PYTHON} "$@"; }}; '
            f"else {'; '.join(fallback)}; fi"
        ),
        f"venv_install -U {shlex.quote(jax)}",
        "venv_install -e '.[tpu]'",
    ]


def worker_install_script(repo: str | None = None, ref: str | None = None, python: str = PYTHON, jax: str = JAX) -> str:
    """The shell text every worker runs to install: with `repo`, clone or update ~/synpro_jax at `ref` first
    (without, ~/synpro_jax is already there: copied by scp); then ~/synpro_venv (see _venv_steps).

    `python` (a version for uv, or an interpreter's path) and `jax` (a requirement) are parameters only so a test can
    run this same text offline with a local interpreter and a stand-in package.
    """
    steps = ["set -e"]
    if repo is not None:
        q_repo, q_ref = shlex.quote(repo), shlex.quote(ref or "HEAD")
        steps += [
            f"if [ ! -d {_home(REMOTE_DIR + '/.git')} ]; then git clone {q_repo} {_HOME_DIR}; fi",
            f"cd {_HOME_DIR}",
            f"git remote set-url origin {q_repo}",
            "git fetch --force --tags origin",
            # A branch or tag, or a commit the server hands out by id; else a commit the fetch above brought.
            (
                f"{{ git fetch origin {q_ref} && git checkout --force --detach FETCH_HEAD; }} || "
                f"git checkout --force --detach {q_ref}"
            ),
        ]
    else:
        steps.append(f"cd {_HOME_DIR}")
    return "; ".join(steps + _venv_steps(python, jax))


def install(
    name: str,
    zone: str,
    project: str | None,
    repo: str | None = None,
    ref: str | None = None,
    scp_from: str | None = None,
) -> list[list[str]]:
    """Commands that put synpro_jax at `ref` (or a copy of `scp_from`) in ~/synpro_jax on every worker and install
    it, with JAX's TPU wheels, in ~/synpro_venv. Rerunning them updates an existing install."""
    if scp_from is not None:
        # A fresh copy each time: scp into an existing directory would nest the new copy inside the old one.
        return [
            ssh(name, zone, project, f"rm -rf {_HOME_DIR}"),
            scp(scp_from, name, zone, project),
            ssh(name, zone, project, worker_install_script()),
        ]
    return [ssh(name, zone, project, worker_install_script(repo, ref))]


def run_file(run_name: str, suffix: str) -> str:
    """A remote file of a run (<run_name>.log, .exit, .pid, .heartbeat), quoted for the remote shell."""
    return _home(f"{LOG_DIR}/{run_name}{suffix}")


def log_files(run_name: str) -> tuple[str, str]:
    """The remote (log, exit status) files of a run, quoted for the remote shell."""
    return run_file(run_name, ".log"), run_file(run_name, ".exit")


# The job's process group is read back from <run>.pid with its start time, so a pid the kernel gave to another process
# since is never signalled. /proc/PID/stat is read after its last ")" (the command name before it may hold spaces):
# [0] is the state (Z: a zombie, which has ended and holds no files or devices), [2] the process group, [19] the start
# time. A group is alive while any process in it is (not only its leader, the wrapper shell: the job and whatever it
# started are in it too).
_PROC_FUNCTIONS = (
    'stat_fields() { local s; read -r s 2>/dev/null < "/proc/$1/stat" || return 1; read -ra f <<< "${s##*) }"; }',
    'started() { local f; stat_fields "$1" && echo "${f[19]}"; }',
    (
        'group_alive() { local p f; for p in /proc/[0-9]*; do stat_fields "${p#/proc/}" && [ "${f[2]}" = "$1" ] && '
        '[ "${f[0]}" != Z ] && return 0; done; return 1; }'
    ),
    # Waits up to $2 seconds while group $1 is alive; fails if it still is.
    (
        'wait_group() { local end=$((SECONDS + $2)); while group_alive "$1"; do [ $SECONDS -lt $end ] || return 1; '
        "sleep 0.2; done; }"
    ),
)
KILLED_WAIT_S = 30  # how long a launch waits for a SIGKILLed copy to be gone (its devices released) before failing


def _kill_previous(pid_file: str, kill_wait_s: int) -> str:
    """Shell text that ends a copy of the run still going on this host: SIGTERM to its process group (a synpro job
    saves and exits 143), up to `kill_wait_s` seconds for every process of the group to end, then SIGKILL to whatever
    is left of it and up to KILLED_WAIT_S seconds for that to be gone too, so the new job never finds the TPU
    (/dev/accel*, /dev/vfio) still held by the old one; a group still there after that fails the launch."""
    return (
        f"if [ -f {pid_file} ]; then read -r old start < {pid_file} || true; "
        'if [ -n "$start" ] && [ "$(started "$old")" = "$start" ]; then '
        'echo "launch: stopping the running copy (process group $old)" >&2; '
        'kill -TERM -- "-$old" 2>/dev/null || true; '
        f'if ! wait_group "$old" {int(kill_wait_s)}; then kill -KILL -- "-$old" 2>/dev/null || true; '
        f'wait_group "$old" {KILLED_WAIT_S} || {{ echo "launch: process group $old is still running '
        f'{KILLED_WAIT_S} s after SIGKILL; not launching a second copy" >&2; exit 1; }}; fi; fi; fi'
    )


def launch(
    name: str,
    zone: str,
    project: str | None,
    command: Sequence[str],
    run_name: str,
    attach: bool = False,
    kill_wait_s: int = KILL_WAIT_S,
) -> list[str]:
    """One ssh to every worker that runs `command` in ~/synpro_jax with ~/synpro_venv/bin first on PATH (see
    launch_script)."""
    return ssh(name, zone, project, launch_script(command, run_name, attach, kill_wait_s))


def launch_script(command: Sequence[str], run_name: str, attach: bool = False, kill_wait_s: int = KILL_WAIT_S) -> str:
    """The shell text of a launch: it ends a copy of the run still going on this host, then runs `command`,
    appending its output to ~/synpro_logs/<run_name>.log and writing its exit status to <run_name>.exit when it
    ends. The job gets SYNPRO_HEARTBEAT=~/synpro_logs/<run_name>.heartbeat, which synpro jobs touch as they go
    (synpro_jax/heartbeat.py), and its process group is kept in <run_name>.pid.

    Nothing in it differs between hosts: each TPU VM finds the slice's coordinator itself. Detached (the default)
    the job runs in a background subshell with its streams off the ssh session, so the ssh returns at once;
    attached, its output is also shown (tee) and the ssh returns the job's exit status when it ends.
    """
    log, exit_file = log_files(run_name)
    tmp, pid, heartbeat = (run_file(run_name, s) for s in (".exit.tmp", ".pid", ".heartbeat"))
    job = shlex.join(command)
    record = f"echo $code > {tmp}; mv -f {tmp} {exit_file}"  # renamed into place: a reader never sees half of it
    # `set -m` only while the subshell forks: it gets a process group of its own (its pid), which the job shares, so
    # the next launch can signal all of it; `set +m` again so bash prints no job notices.
    keep_pid = f'echo "$! $(started $!)" > {pid}'
    if attach:
        run = (
            f"set -m; ( {job} 2>&1 | tee -a {log}; exit ${{PIPESTATUS[0]}} ) & set +m; {keep_pid}; "
            f"code=0; wait $! || code=$?; {record}; exit $code"
        )
    else:
        # A subshell rather than `nohup bash -c '...'`, which would quote the job once more. It ignores SIGHUP (as
        # nohup would) when the ssh session ends, and traps SIGTERM only to outlive it and record the job's 143;
        # `set +e` so a failing job still gets its exit status recorded.
        run = (
            f'set -m; ( set +e; trap "" HUP; trap : TERM; {job} >> {log} 2>&1; code=$?; {record} ) '
            f"> /dev/null 2>&1 < /dev/null & set +m; {keep_pid}"
        )
    steps = [
        "set -e",
        f'export PATH="$HOME/{VENV_DIR}/bin:$PATH"',
        *_PROC_FUNCTIONS,
        f"mkdir -p {_home(LOG_DIR)}",
        f"cd {_HOME_DIR}",
        f"export SYNPRO_HEARTBEAT={heartbeat}",
        _kill_previous(pid, kill_wait_s),
        f"rm -f {exit_file} {heartbeat}",
        run,
    ]
    return "; ".join(steps)


def read_status(name: str, zone: str, project: str | None, run_name: str) -> list[str]:
    """One ssh to worker 0 that prints `exit=<the job's exit status; empty while it runs, or if it never ran>` and
    `heartbeat_age=<seconds since the job last touched its heartbeat file; empty if it has not>`."""
    exit_file, heartbeat = run_file(run_name, ".exit"), run_file(run_name, ".heartbeat")
    command = (
        f'echo "exit=$(cat {exit_file} 2>/dev/null)"; '
        f"if t=$(stat -c %Y {heartbeat} 2>/dev/null); then "
        'echo "heartbeat_age=$(( $(date +%s) - t ))"; else echo heartbeat_age=; fi'
    )
    return ssh(name, zone, project, command, worker="0")


class Result(NamedTuple):
    returncode: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[..., Result]  # runner(argv, capture=False) -> Result


def run(argv: list[str], capture: bool = False) -> Result:
    """Runs a gcloud command; with `capture`, returns its stdout and stderr instead of showing them."""
    try:
        done = subprocess.run(
            argv,
            check=False,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
    except FileNotFoundError:
        raise SystemExit(
            f"error: {argv[0]} is not on PATH; install the Google Cloud CLI (cloud.google.com/sdk)"
        ) from None
    return Result(done.returncode, done.stdout or "", done.stderr or "")


def run_all(commands: list[list[str]], dry_run: bool, runner: Runner = run) -> int:
    """Prints the commands (dry run) or runs them in order, stopping at the first that fails; its exit status."""
    for argv in commands:
        if dry_run:
            print(shlex.join(argv))
            continue
        print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
        code = runner(argv).returncode
        if code:
            return code
    return 0
