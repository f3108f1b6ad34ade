"""What the tpu/ scripts share: argument checks, the gcloud command lines they build, and the runner that runs them.

Every command is built as an argv list, so `--dry_run` can print exactly what would run (shlex.join) and tests
can compare it; the scripts never go through a local shell.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import Callable, NamedTuple, Sequence

TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")
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
LOG_DIR = "synpro_logs"  # <run>.log and <run>.exit on every worker, relative to the home directory
EXIT_PREEMPTED = 143  # what synpro jobs exit with after SIGTERM (they save first): rerun the same command


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
    p.add_argument("--version", help="TPU runtime; default: Google's JAX runtime for the generation "
                                     "(v5litepod: v2-alpha-tpuv5-lite, v4: tpu-ubuntu2204-base, ...)")
    kind = p.add_mutually_exclusive_group()  # one provisioning model per slice
    kind.add_argument("--spot", action="store_true", help="a Spot slice (preemptible, no time limit)")
    kind.add_argument("--preemptible", action="store_true", help="a preemptible slice (at most 24 hours)")
    kind.add_argument("--reserved", action="store_true", help="from the project's reserved capacity")


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
    command = argv[i + 1:]
    if unknown and i < len(argv):
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not command:
        p.error("--: missing the command to run after `--` (e.g. -- synpro train --gin_file=FILE)")
    return args, command


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad input fails here, in one line naming the flag, before any gcloud command runs (exit status 2)."""
    if not NAME_RE.match(args.name):
        p.error(f"--name: {args.name!r} is not a valid TPU name (lowercase letters, digits and hyphens, starting "
                "with a letter, not ending with a hyphen, at most 63 characters)")
    if not args.zone.strip():
        p.error("--zone: empty")
    if args.project is not None and not args.project.strip():
        p.error("--project: empty")
    if getattr(args, "accelerator_type", None) is not None and not ACCELERATOR_RE.match(args.accelerator_type):
        hint = " (gcloud calls v5e v5litepod)" if args.accelerator_type.startswith("v5e-") else ""
        p.error(f"--accelerator_type: {args.accelerator_type!r} is not a TPU type such as v5litepod-8, v4-32, "
                f"v5p-8 or v6e-8 (pattern {ACCELERATOR_RE.pattern}){hint}")
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


SCRIPT_FLAGS = ("name", "zone", "project", "accelerator_type", "version", "spot", "preemptible", "reserved", "repo",
                "ref", "scp_from", "run_name")


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


def create(name: str, zone: str, project: str | None, accelerator_type: str, version: str | None = None,
           provisioning: str | None = None) -> list[str]:
    """`provisioning`: None (on demand), "spot", "preemptible" or "reserved"."""
    version = version or DEFAULT_VERSIONS[accelerator_type.split("-")[0]]
    return [*TPU_VM, "create", name, *where(zone, project), f"--accelerator-type={accelerator_type}",
            f"--version={version}"] + ([f"--{provisioning}"] if provisioning else [])


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
# expand inside quotes. ~/.local/bin is where a non-root `pip install` puts the `synpro` script, and a
# non-interactive ssh shell does not add it to PATH.
def _home(path: str) -> str:
    """A path under the remote home directory, quoted for the remote shell."""
    return f'"$HOME/{path}"'


_HOME_DIR = _home(REMOTE_DIR)
_PIP = "python3 -m pip install"
_PIP_STEPS = [f"{_PIP} -U pip", f"{_PIP} -U 'jax[tpu]'", f"{_PIP} -e ."]


def install(name: str, zone: str, project: str | None, repo: str | None = None, ref: str | None = None,
            scp_from: str | None = None) -> list[list[str]]:
    """Commands that put synpro_jax at `ref` (or a copy of `scp_from`) in ~/synpro_jax on every worker and
    pip-install it there with JAX's TPU wheels. Rerunning them updates an existing install."""
    if scp_from is not None:
        # A fresh copy each time: scp into an existing directory would nest the new copy inside the old one.
        return [ssh(name, zone, project, f"rm -rf {_HOME_DIR}"),
                scp(scp_from, name, zone, project),
                ssh(name, zone, project, "; ".join(["set -e", f"cd {_HOME_DIR}", *_PIP_STEPS]))]
    q_repo, q_ref = shlex.quote(repo), shlex.quote(ref or "HEAD")
    steps = [
        "set -e",
        f"if [ ! -d {_home(REMOTE_DIR + '/.git')} ]; then git clone {q_repo} {_HOME_DIR}; fi",
        f"cd {_HOME_DIR}",
        f"git remote set-url origin {q_repo}",
        "git fetch --force --tags origin",
        # A branch or tag, or a commit the server hands out by id; else a commit the fetch above brought.
        f"{{ git fetch origin {q_ref} && git checkout --force --detach FETCH_HEAD; }} || "
        f"git checkout --force --detach {q_ref}",
        *_PIP_STEPS,
    ]
    return [ssh(name, zone, project, "; ".join(steps))]


def log_files(run_name: str) -> tuple[str, str]:
    """The remote (log, exit status) files of a run, quoted for the remote shell."""
    return _home(f"{LOG_DIR}/{run_name}.log"), _home(f"{LOG_DIR}/{run_name}.exit")


def launch(name: str, zone: str, project: str | None, command: Sequence[str], run_name: str,
           attach: bool = False) -> list[str]:
    """One ssh to every worker that runs `command` in ~/synpro_jax, appending its output to
    ~/synpro_logs/<run_name>.log and writing its exit status to <run_name>.exit when it ends.

    Nothing in it differs between hosts: each TPU VM finds the slice's coordinator itself. Detached (the default)
    the job runs in a background subshell with its streams off the ssh session, so the ssh returns at once;
    attached, its output is also shown (tee) and the ssh returns the job's exit status when it ends.
    """
    log, exit_file = log_files(run_name)
    tmp = _home(f"{LOG_DIR}/{run_name}.exit.tmp")
    job = shlex.join(command)
    record = f"echo $code > {tmp}; mv -f {tmp} {exit_file}"  # renamed into place: a reader never sees half of it
    if attach:
        run = f"{job} 2>&1 | tee -a {log}; code=${{PIPESTATUS[0]}}; {record}; exit $code"
    else:
        # A subshell rather than `nohup bash -c '...'`, which would quote the job once more. It ignores SIGHUP (as
        # nohup would) when the ssh session ends, and traps SIGTERM only to outlive it and record the job's 143;
        # `set +e` so a failing job still gets its exit status recorded.
        run = (f'( set +e; trap "" HUP; trap : TERM; {job} >> {log} 2>&1; code=$?; {record} ) '
               "> /dev/null 2>&1 < /dev/null &")
    steps = ["set -e", 'export PATH="$HOME/.local/bin:$PATH"', f"mkdir -p {_home(LOG_DIR)}", f"cd {_HOME_DIR}",
             f"rm -f {exit_file}", run]
    return ssh(name, zone, project, "; ".join(steps))


def read_exit(name: str, zone: str, project: str | None, run_name: str) -> list[str]:
    """Prints the job's exit status on worker 0, or nothing while it runs (or never ran)."""
    return ssh(name, zone, project, f"cat {log_files(run_name)[1]} 2>/dev/null || true", worker="0")


class Result(NamedTuple):
    returncode: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[..., Result]  # runner(argv, capture=False) -> Result


def run(argv: list[str], capture: bool = False) -> Result:
    """Runs a gcloud command; with `capture`, returns its stdout and stderr instead of showing them."""
    try:
        done = subprocess.run(argv, text=True, stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None)
    except FileNotFoundError:
        raise SystemExit(f"error: {argv[0]} is not on PATH; install the Google Cloud CLI (cloud.google.com/sdk)")
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
