"""The tpu/ launch scripts (synpro_jax.cloud_tpu, run as users run them: `python tpu/create.py ...`): the exact gcloud
commands they print with --dry_run, their one-line errors, the remote shell commands they send (run here with bash,
HOME pointing at a temporary directory, fake `synpro` and `python3`), and the babysitter's decisions against a fake
gcloud. No network, no gcloud."""

import atexit
import json
import os
from pathlib import Path
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from synpro_jax import heartbeat
from synpro_jax.cloud_tpu import babysit, gcloud

REPO = Path(__file__).resolve().parents[2]

WHERE = ["--name", "synpro-v4", "--zone", "us-central2-b", "--project", "my-proj"]
GIN = [
    "synpro",
    "train",
    "--gin_file=gin/experiments/olmo_400m_dclm.gin",
    '--gin.OUT_DIR="gs://b/run"',
    "--gin.LIST=[1, 2]",
]
SSH = "gcloud compute tpus tpu-vm ssh synpro-v4 --zone=us-central2-b --project=my-proj --worker=all"
# What every worker runs after the checkout (unquoted: as the remote shell receives it).
VENV_STEPS = (
    """if python3 -m pip install --user -U uv && """
    """python3 -m uv venv --allow-existing --python 3.12 "$HOME/synpro_venv"; """
    """then venv_install() { python3 -m uv pip install --python "$HOME/synpro_venv/bin/python" "$@"; }; """
    """else py=; for c in python3.13 python3.12 python3.11; do """
    """if "$c" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then py=$c; """
    """break; fi; done; [ -n "$py" ] || { echo "install: could not install uv, and this worker has no Python >= 3.11 """
    """with venv" >&2; exit 1; }; "$py" -m venv "$HOME/synpro_venv"; """
    """venv_install() { "$HOME/synpro_venv/bin/python" -m pip install "$@"; }; fi; """
    """venv_install -U 'jax[tpu]'; venv_install -e '.[tpu]'"""
)
LAUNCH_SCRIPT = (
    """set -e; export PATH="$HOME/synpro_venv/bin:$PATH"; """
    """stat_fields() { local s; read -r s 2>/dev/null < "/proc/$1/stat" || return 1; read -ra f <<< "${s##*) }"; }; """
    """started() { local f; stat_fields "$1" && echo "${f[19]}"; }; """
    """group_alive() { local p f; for p in /proc/[0-9]*; do stat_fields "${p#/proc/}" && [ "${f[2]}" = "$1" ] && """
    """[ "${f[0]}" != Z ] && return 0; done; return 1; }; """
    """wait_group() { local end=$((SECONDS + $2)); while group_alive "$1"; do [ $SECONDS -lt $end ] || return 1; """
    """sleep 0.2; done; }; """
    """mkdir -p "$HOME/synpro_logs"; cd "$HOME/synpro_jax"; """
    """export SYNPRO_HEARTBEAT="$HOME/synpro_logs/synpro-v4.heartbeat"; """
    """if [ -f "$HOME/synpro_logs/synpro-v4.pid" ]; then """
    """read -r old start < "$HOME/synpro_logs/synpro-v4.pid" || true; """
    """if [ -n "$start" ] && [ "$(started "$old")" = "$start" ]; then """
    """echo "launch: stopping the running copy (process group $old)" >&2; kill -TERM -- "-$old" 2>/dev/null || true; """
    """if ! wait_group "$old" 120; then kill -KILL -- "-$old" 2>/dev/null || true; """
    """wait_group "$old" 30 || { echo "launch: process group $old is still running 30 s after SIGKILL; """
    """not launching a second copy" >&2; exit 1; }; fi; fi; fi; """
    """rm -f "$HOME/synpro_logs/synpro-v4.exit" "$HOME/synpro_logs/synpro-v4.heartbeat"; """
    """set -m; ( set +e; trap "" HUP; trap : TERM; """
    """synpro train --gin_file=gin/experiments/olmo_400m_dclm.gin '--gin.OUT_DIR="gs://b/run"' '--gin.LIST=[1, 2]' """
    """>> "$HOME/synpro_logs/synpro-v4.log" 2>&1; code=$?; echo $code > "$HOME/synpro_logs/synpro-v4.exit.tmp"; """
    """mv -f "$HOME/synpro_logs/synpro-v4.exit.tmp" "$HOME/synpro_logs/synpro-v4.exit" ) """
    """> /dev/null 2>&1 < /dev/null & set +m; echo "$! $(started $!)" > """
    '"$HOME/synpro_logs/synpro-v4.pid"'
)


def ssh_line(command: str, worker: str = "all") -> str:
    return f"{SSH.replace('--worker=all', f'--worker={worker}')} {shlex.quote('--command=' + command)}"


LAUNCH = ssh_line(LAUNCH_SCRIPT)


# The scripts run with a `gcloud` first on PATH that fails: a test that forgot --dry_run must not reach a real one.
_GUARD = tempfile.mkdtemp(prefix="synpro-tpu-tests-")
atexit.register(shutil.rmtree, _GUARD, ignore_errors=True)
Path(_GUARD, "gcloud").write_text("#!/bin/sh\necho 'tests: a real gcloud call' >&2\nexit 99\n")
Path(_GUARD, "gcloud").chmod(0o755)
GUARDED = {**os.environ, "PATH": f"{_GUARD}{os.pathsep}{os.environ['PATH']}"}


def script(name, *args, env=None):
    return subprocess.run(
        [sys.executable, f"tpu/{name}.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env or GUARDED,
        timeout=30,
        check=False,
    )


def dry(name, *args) -> list[str]:
    done = script(name, "--dry_run", *args)  # before any `--`, after which it would belong to the command
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.splitlines()


def remote_command(line: str) -> str:
    """The shell command an ssh line sends to the workers, as gcloud would receive it."""
    argv = shlex.split(line)
    assert argv[-1].startswith("--command=")
    return argv[-1][len("--command=") :]


# --- dry runs: the exact commands ---


def test_create_dry_run():
    assert dry("create", *WHERE, "--accelerator_type", "v4-32", "--spot") == [
        (
            "gcloud compute tpus tpu-vm create synpro-v4 --zone=us-central2-b --project=my-proj "
            "--accelerator-type=v4-32 "
            "--version=tpu-ubuntu2204-base --spot"
        )
    ]
    assert dry("create", "--name", "synpro-v5e", "--zone", "us-west4-a", "--accelerator_type", "v5litepod-8") == [
        (
            "gcloud compute tpus tpu-vm create synpro-v5e --zone=us-west4-a "
            "--accelerator-type=v5litepod-8 "
            "--version=v2-alpha-tpuv5-lite"
        )
    ]
    assert dry("create", *WHERE, "--accelerator_type", "v4-8", "--version", "tpu-vm-base", "--preemptible") == [
        (
            "gcloud compute tpus tpu-vm create synpro-v4 --zone=us-central2-b --project=my-proj "
            "--accelerator-type=v4-8 "
            "--version=tpu-vm-base --preemptible"
        )
    ]
    assert dry("create", *WHERE, "--accelerator_type", "v6e-16", "--reserved")[0].endswith(
        "--accelerator-type=v6e-16 --version=v2-alpha-tpuv6e --reserved"
    )


def test_queued_create_and_delete_dry_run():
    """Google's form: gcloud compute tpus queued-resources create QR --node-id=NODE --zone=Z --accelerator-type=T
    --runtime-version=V [--spot | --reserved]; delete --force also deletes the node."""
    assert dry("create", *WHERE, "--accelerator_type", "v4-32", "--spot", "--queued") == [
        (
            "gcloud compute tpus queued-resources create synpro-v4 --node-id=synpro-v4 --zone=us-central2-b "
            "--project=my-proj --accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --spot"
        )
    ]
    assert dry("create", "--name", "q", "--zone", "us-west4-a", "--accelerator_type", "v5litepod-8", "--queued") == [
        (
            "gcloud compute tpus queued-resources create q --node-id=q --zone=us-west4-a "
            "--accelerator-type=v5litepod-8 "
            "--runtime-version=v2-alpha-tpuv5-lite"
        )
    ]
    assert dry("delete", *WHERE, "--queued", "--yes") == [
        ("gcloud compute tpus queued-resources delete synpro-v4 --zone=us-central2-b --project=my-proj --force --quiet")
    ]


@pytest.mark.parametrize(
    ("accelerator", "version"),
    [
        ("v2-8", "tpu-ubuntu2204-base"),
        ("v3-32", "tpu-ubuntu2204-base"),
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v5litepod-8", "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_default_runtime_per_generation(accelerator, version):
    assert gcloud.create("t", "z", None, accelerator)[-1] == f"--version={version}"


def test_delete_dry_run():
    assert dry("delete", *WHERE) == [
        ("gcloud compute tpus tpu-vm delete synpro-v4 --zone=us-central2-b --project=my-proj")
    ]
    assert dry("delete", *WHERE, "--yes") == [
        ("gcloud compute tpus tpu-vm delete synpro-v4 --zone=us-central2-b --project=my-proj --quiet")
    ]


def test_install_from_git_dry_run():
    assert dry("install", *WHERE, "--repo", "https://github.com/o/synpro_jax.git", "--ref", "v0.3") == [
        ssh_line(
            """set -e; if [ ! -d "$HOME/synpro_jax/.git" ]; then git clone """
            """https://github.com/o/synpro_jax.git "$HOME/synpro_jax"; fi; cd "$HOME/synpro_jax"; """
            """git remote set-url origin https://github.com/o/synpro_jax.git; git fetch --force --tags origin; """
            """{ git fetch origin v0.3 && git checkout --force --detach FETCH_HEAD; } || """
            f"""git checkout --force --detach v0.3; {VENV_STEPS}"""
        )
    ]


def test_install_by_scp_dry_run():
    assert dry("install", *WHERE, "--scp_from", ".") == [
        SSH + """ '--command=rm -rf "$HOME/synpro_jax"'""",
        (
            "gcloud compute tpus tpu-vm scp --recurse . 'synpro-v4:~/synpro_jax' --worker=all --zone=us-central2-b "
            "--project=my-proj"
        ),
        ssh_line(f"""set -e; cd "$HOME/synpro_jax"; {VENV_STEPS}"""),
    ]


def test_launch_dry_run_quotes_the_command():
    assert dry("launch", *WHERE, "--", *GIN) == [LAUNCH]


def test_launch_attached_dry_run():
    [line] = dry("launch", *WHERE, "--run_name", "r1", "--attach", "--", "synpro", "train", "--gin.LIST=[1, 2]")
    script = remote_command(line)
    assert script.startswith(LAUNCH_SCRIPT.split("; set -m; ")[0].replace("synpro-v4", "r1"))
    assert script.endswith(
        """; set -m; ( synpro train '--gin.LIST=[1, 2]' 2>&1 | tee -a "$HOME/synpro_logs/r1.log"; """
        """exit ${PIPESTATUS[0]} ) & set +m; echo "$! $(started $!)" > "$HOME/synpro_logs/r1.pid"; """
        """code=0; wait $! || code=$?; echo $code > "$HOME/synpro_logs/r1.exit.tmp"; """
        """mv -f "$HOME/synpro_logs/r1.exit.tmp" "$HOME/synpro_logs/r1.exit"; exit $code"""
    )


def test_babysit_dry_run_prints_one_cycle():
    lines = dry("babysit", *WHERE, "--accelerator_type", "v4-32", "--spot", "--scp_from", ".", "--", *GIN)
    assert lines == [
        (
            "gcloud compute tpus tpu-vm create synpro-v4 --zone=us-central2-b --project=my-proj "
            "--accelerator-type=v4-32 "
            "--version=tpu-ubuntu2204-base --spot"
        ),
        *dry("install", *WHERE, "--scp_from", "."),
        LAUNCH,
    ]
    queued = dry("babysit", *WHERE, "--accelerator_type", "v4-32", "--spot", "--queued", "--scp_from", ".", "--", *GIN)
    assert queued == [*dry("create", *WHERE, "--accelerator_type", "v4-32", "--spot", "--queued"), *lines[1:]]


# --- bad input: exit 2, one line naming the flag ---


@pytest.mark.parametrize(
    ("name", "args", "flag"),
    [
        ("create", ["--name", "Synpro", "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
        ("create", ["--name", "1tpu", "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
        ("create", ["--name", "tpu_a", "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
        ("create", ["--name", "tpu-", "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
        ("create", ["--name", "t" * 64, "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
        ("create", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v5e-8"], "--accelerator_type"),
        ("create", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4"], "--accelerator_type"),
        ("create", ["--name", "tpu", "--zone", "z", "--accelerator_type", "V4-8"], "--accelerator_type"),
        ("create", ["--name", "tpu", "--accelerator_type", "v4-8"], "--zone"),
        (
            "create",
            ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--spot", "--preemptible"],
            "--preemptible",
        ),
        (
            "create",
            ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--preemptible", "--queued"],
            "--queued",
        ),
        ("install", ["--name", "tpu", "--zone", "z"], "--repo"),
        ("install", ["--name", "tpu", "--zone", "z", "--repo", "r", "--scp_from", "."], "--scp_from"),
        ("install", ["--name", "tpu", "--zone", "z", "--scp_from", "no/such/dir"], "--scp_from"),
        ("install", ["--name", "tpu", "--zone", "z", "--scp_from", ".", "--ref", "main"], "--ref"),
        ("launch", ["--name", "tpu", "--zone", "z", "synpro", "train"], "--"),
        ("launch", ["--name", "tpu", "--zone", "z"], "--"),
        ("launch", ["--name", "tpu", "--zone", "z", "--"], "--"),
        ("launch", ["--name", "tpu", "--zone", "z", "--run_name", "a/b", "--", "synpro"], "--run_name"),
        ("babysit", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--repo", "r"], "--"),
        (
            "babysit",
            ["--name", "tpu", "--zone", "z", "--accelerator_type", "v9-8", "--repo", "r", "--", "x"],
            "--accelerator_type",
        ),
        ("babysit", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--", "x"], "--repo"),
        (
            "babysit",
            ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--repo", "r", "--poll_s", "0", "--", "x"],
            "--poll_s",
        ),
        (
            "babysit",
            ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--repo", "r", "--stale_s", "-1", "--", "x"],
            "--stale_s",
        ),
        (
            "babysit",
            ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--repo", "r", "--stale_s", "30", "--", "x"],
            "--stale_s",
        ),
        (
            "babysit",
            [
                "--name",
                "tpu",
                "--zone",
                "z",
                "--accelerator_type",
                "v4-8",
                "--repo",
                "r",
                "--stale_s",
                "119",
                "--",
                "x",
            ],
            "--stale_s",
        ),
        (
            "babysit",
            [
                "--name",
                "tpu",
                "--zone",
                "z",
                "--accelerator_type",
                "v4-8",
                "--repo",
                "r",
                "--backoff_s",
                "-5",
                "--",
                "x",
            ],
            "--backoff_s",
        ),
        (
            "babysit",
            [
                "--name",
                "tpu",
                "--zone",
                "z",
                "--accelerator_type",
                "v4-8",
                "--repo",
                "r",
                "--preemptible",
                "--queued",
                "--",
                "x",
            ],
            "--queued",
        ),
        ("delete", ["--name", "my.tpu", "--zone", "z"], "--name"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(name, args, flag):
    done = script(name, "--dry_run", *args)
    assert done.returncode == 2, done
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"{name}.py: error: "), line
    assert re.search(rf"(^|\s){re.escape(flag)}([:,\s]|$)", line[len(f"{name}.py: error: ") :]), line


def test_script_flags_give_a_script_the_same_arguments():
    """What `synpro sweep --launcher=tpu` prints a babysit.py line with, for each slice it launched."""
    argv = [
        *WHERE,
        "--accelerator_type",
        "v4-32",
        "--spot",
        "--queued",
        "--repo",
        "https://g/r.git",
        "--ref",
        "v1",
        "--run_name",
        "r1",
        "--",
        "synpro",
        "train",
    ]
    p = gcloud.parser("babysit.py", "")
    gcloud.add_accelerator(p)
    gcloud.add_install(p)
    gcloud.add_run_name(p)
    args, command = gcloud.parse_with_command(p, argv)
    assert [*gcloud.script_flags(args), "--", *command] == argv
    args.run_name = args.name  # the default is left out
    assert "--run_name" not in gcloud.script_flags(args)


SCRIPT_ARGS = {
    "create": [*WHERE, "--accelerator_type", "v4-32", "--spot", "--queued"],
    "install": [*WHERE, "--repo", "https://g/r.git", "--ref", "v1"],
    "launch": [*WHERE, "--run_name", "r1", "--", *GIN],
    "babysit": [*WHERE, "--accelerator_type", "v4-32", "--scp_from", ".", "--", *GIN],
    "delete": [*WHERE, "--yes"],
}


@pytest.mark.parametrize("name", sorted(SCRIPT_ARGS))
def test_a_script_runs_with_the_standard_library_alone_from_any_directory(name, tmp_path):
    """`python tpu/NAME.py` imports synpro_jax.cloud_tpu from the checkout it sits in: no install, no site-packages
    (-S), no environment (-I), from another directory; it prints what `python -m synpro_jax.cloud_tpu.NAME` does."""
    args = ["--dry_run", *SCRIPT_ARGS[name]]
    bare = subprocess.run(
        [sys.executable, "-I", "-S", str(REPO / "tpu" / f"{name}.py"), *args],
        cwd=tmp_path if name != "babysit" else REPO,  # --scp_from . must be a directory here
        capture_output=True,
        text=True,
        env=GUARDED,
        timeout=30,
    )
    assert bare.returncode == 0 and bare.stderr == "", bare.stderr
    module = subprocess.run(
        [sys.executable, "-m", f"synpro_jax.cloud_tpu.{name}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=GUARDED,
        timeout=30,
    )
    assert module.returncode == 0 and module.stderr == "", module.stderr
    assert bare.stdout == module.stdout == "\n".join(dry(name, *SCRIPT_ARGS[name])) + "\n"


def test_cloud_tpu_imports_the_standard_library_and_synpro_jax_stdlib_modules_only():
    """What the scripts load of synpro_jax (nothing that needs JAX, TensorFlow or etils)."""
    check = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import synpro_jax.cloud_tpu.babysit, synpro_jax.cloud_tpu.create, synpro_jax.cloud_tpu.delete\n"
        "import synpro_jax.cloud_tpu.install, synpro_jax.cloud_tpu.launch\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('synpro_jax'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", check, str(REPO)], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.split() == [
        "synpro_jax",
        *(f"synpro_jax.cloud_tpu{m}" for m in ("", ".babysit", ".create", ".delete", ".gcloud", ".install", ".launch")),
        "synpro_jax.exit_codes",
        "synpro_jax.heartbeat",
    ]


def test_longest_valid_name():
    assert dry("delete", "--name", "t" * 63, "--zone", "z")


# --- the remote commands, run here with bash as the workers' login shell would ---

# A process the fake job starts in its process group (FAKE_CHILD=1): on SIGTERM it takes 3 s to "save" (writes
# $FAKE_PIDS.saved, exits 143), or, hung, ignores it. It says "ready" once its handler is in place.
FAKE_CHILD = """
import os, signal, sys, time
def save(*_):
    time.sleep(3)
    open(os.environ["FAKE_PIDS"] + ".saved", "w").close()
    sys.exit(143)
signal.signal(signal.SIGTERM, save if sys.argv[1] == "wait_for_sigterm" else signal.SIG_IGN)
print("ready", flush=True)
time.sleep(30)
"""

FAKE_SYNPRO = f"""#!{sys.executable}
import json, os, signal, subprocess, sys, time
record = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "heartbeat": os.environ.get("SYNPRO_HEARTBEAT")}}
if os.environ.get("FAKE_OLD_GROUP"):  # the live (not zombie) processes of that group as this job starts
    alive = []
    for entry in os.listdir("/proc"):
        try:
            fields = open(f"/proc/{{entry}}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == os.environ["FAKE_OLD_GROUP"] and fields[0] != "Z":
            alive.append(int(entry))
    record["old_group_alive"] = alive
print(json.dumps(record), flush=True)
mode = os.environ.get("FAKE_MODE")
if mode in ("wait_for_sigterm", "ignore_sigterm"):  # a synpro job saves, then exits 143; a hung one does not
    signal.signal(signal.SIGTERM, (lambda *_: sys.exit(143)) if mode == "wait_for_sigterm" else signal.SIG_IGN)
    pids = [os.getpid(), os.getppid()]
    if os.environ.get("FAKE_CHILD"):
        child = subprocess.Popen([sys.executable, "-c", {FAKE_CHILD!r}, mode], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\\n"
        pids.append(child.pid)
    with open(os.environ["FAKE_PIDS"] + ".tmp", "w") as f:
        f.write(" ".join(map(str, pids)))
    os.rename(os.environ["FAKE_PIDS"] + ".tmp", os.environ["FAKE_PIDS"])  # never seen half written
    time.sleep(30)
sys.exit(3)
"""


@pytest.fixture
def worker(tmp_path):
    """A stand-in worker: a home directory with a checkout and a fake `synpro` in ~/synpro_venv/bin."""
    home = tmp_path / "home"
    (home / "synpro_jax").mkdir(parents=True)
    (home / "synpro_venv" / "bin").mkdir(parents=True)
    fake = home / "synpro_venv" / "bin" / "synpro"
    fake.write_text(FAKE_SYNPRO)
    fake.chmod(0o755)
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "FAKE_PIDS": str(tmp_path / "pids")}
    return home, env


def wait_for(path: Path, timeout=10.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text()


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie has ended: this container's init may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def fake_jobs(home: Path) -> list[int]:
    """The live processes running this worker's fake synpro."""
    fake, pids = str(home / "synpro_venv" / "bin" / "synpro").encode(), []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and fake in (entry / "cmdline").read_bytes() and running(int(entry.name)):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def run_remote(line_or_argv, env, timeout=30) -> subprocess.CompletedProcess:
    line = line_or_argv if isinstance(line_or_argv, str) else shlex.join(line_or_argv)
    return subprocess.run(
        ["bash", "-c", remote_command(line)], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_launched_command_reaches_the_job_intact(worker):
    home, env = worker
    command = [*GIN, "--gin.ORGANIC=['/d/*.jsonl.zst']", "it's", "$HOME", "a;b"]
    started = time.monotonic()
    done = run_remote(gcloud.launch("t", "z", None, command, "run1"), env)
    assert done.returncode == 0 and done.stdout == "", done
    assert time.monotonic() - started < 5  # detached: the ssh returns without waiting for the job
    assert wait_for(home / "synpro_logs" / "run1.exit") == "3\n"
    record = json.loads((home / "synpro_logs" / "run1.log").read_text())
    assert record == {
        "argv": command[1:],
        "cwd": str(home / "synpro_jax"),
        "heartbeat": str(home / "synpro_logs" / "run1.heartbeat"),
    }
    assert not (home / "synpro_logs" / "run1.exit.tmp").exists()
    pid, start = (home / "synpro_logs" / "run1.pid").read_text().split()
    assert int(pid) > 1 and int(start) > 0


def test_attached_launch_streams_and_returns_the_exit_status(worker):
    home, env = worker
    (home / "synpro_logs").mkdir()
    (home / "synpro_logs" / "r.exit").write_text("143\n")  # a previous run's status is cleared at launch
    (home / "synpro_logs" / "r.heartbeat").write_text("")  # and its heartbeat
    done = run_remote(gcloud.launch("t", "z", None, GIN, "r", attach=True), env)
    assert done.returncode == 3
    assert json.loads(done.stdout)["argv"] == GIN[1:]
    assert (home / "synpro_logs" / "r.log").read_text() == done.stdout
    assert (home / "synpro_logs" / "r.exit").read_text() == "3\n"
    assert not (home / "synpro_logs" / "r.heartbeat").exists()  # the fake job does not beat
    assert done.stderr == ""  # no job-control notices


def test_sigterm_to_every_process_records_143(worker):
    """A preemption or maintenance event SIGTERMs every process: the job saves and exits 143, and the shell around
    it survives long enough to record that."""
    home, env = worker
    run_remote(gcloud.launch("t", "z", None, ["synpro", "train"], "r"), {**env, "FAKE_MODE": "wait_for_sigterm"})
    job, wrapper = map(int, wait_for(Path(env["FAKE_PIDS"])).split())
    assert job > 1 and wrapper > 1 and wrapper != os.getpid()
    os.kill(wrapper, signal.SIGTERM)
    os.kill(job, signal.SIGTERM)
    assert wait_for(home / "synpro_logs" / "r.exit") == "143\n"


@pytest.mark.parametrize("mode", ["wait_for_sigterm", "ignore_sigterm"])
def test_a_launch_stops_the_running_copy_first(worker, mode):
    """Launching again (a babysitter relaunching a hung job, or a user) never leaves two copies on a worker: the one
    running gets SIGTERM, and every process of its group (the job started one) is waited for, not only the wrapper
    shell: one still saving is not cut short, and the new job starts only once none is left (a dying copy could
    still hold the TPU). A hung copy gets SIGKILL after the wait."""
    home, env = worker
    env = {**env, "FAKE_MODE": mode, "FAKE_CHILD": "1"}
    pids = Path(env["FAKE_PIDS"])
    saved = Path(f"{pids}.saved")
    launch = gcloud.launch(
        "t", "z", None, ["synpro", "train"], "r", kill_wait_s=10 if mode == "wait_for_sigterm" else 2
    )
    first = run_remote(launch, env)
    assert first.returncode == 0 and "stopping" not in first.stderr, first
    job1, wrapper1, child1 = map(int, wait_for(pids).split())
    pids.unlink()
    try:
        started = time.monotonic()
        second = run_remote(launch, {**env, "FAKE_OLD_GROUP": str(wrapper1)})
        assert second.returncode == 0, second
        assert f"launch: stopping the running copy (process group {wrapper1})" in second.stderr
        assert not running(job1) and not running(wrapper1) and not running(child1)
        if mode == "wait_for_sigterm":  # the job itself (and so the wrapper) ended at once; its child saved for 3 s
            assert saved.exists()
            assert time.monotonic() - started < 9  # not the whole wait: the group was gone once it had saved
        else:
            assert not saved.exists()
        # The first copy's exit status (143 when it saved) was written before the launch cleared it, not after.
        assert not (home / "synpro_logs" / "r.exit").exists()
        job2, _wrapper2, _child2 = map(int, wait_for(pids).split())
        assert fake_jobs(home) == [job2]
        assert json.loads((home / "synpro_logs" / "r.log").read_text().splitlines()[-1])["old_group_alive"] == []
    finally:
        for pid in [*fake_jobs(home), *map(int, pids.read_text().split()[2:] if pids.exists() else [])]:
            os.kill(pid, signal.SIGKILL)


def test_a_launch_fails_if_the_old_copy_outlives_sigkill():
    """The wait after SIGKILL is bounded: a group still there (a process stuck in the kernel) fails the launch in one
    line instead of starting a second copy beside it."""
    script = gcloud.launch_script(["synpro", "train"], "r")
    assert gcloud.KILLED_WAIT_S == 30
    assert (
        'kill -KILL -- "-$old" 2>/dev/null || true; wait_group "$old" 30 || { echo "launch: process group $old '
        'is still running 30 s after SIGKILL; not launching a second copy" >&2; exit 1; }'
    ) in script


def test_the_launch_scripts_group_functions():
    """group_alive: any live process of the group, not only its leader (gone here); zombies have ended. wait_group:
    true once the group is gone, false after its bounded wait while it is not."""
    functions = "; ".join(gcloud._PROC_FUNCTIONS)

    def shell(command):
        return subprocess.run(
            ["bash", "-c", f"set -e; {functions}; {command}"], capture_output=True, text=True, timeout=30, check=False
        )

    # A group whose leader exits at once, leaving a member that sleeps for 2 s.
    group = subprocess.Popen(
        ["bash", "-c", "sleep 2 & echo $!"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    member = int(group.stdout.readline())
    group.wait()
    zombie = subprocess.Popen(["true"], start_new_session=True)  # never waited for until the end: a zombie
    try:
        while running(zombie.pid):
            time.sleep(0.02)
        assert shell(f"started {member}").stdout.strip() == Path(f"/proc/{member}/stat").read_text().split()[21]
        assert shell(f"group_alive {group.pid}").returncode == 0
        assert shell(f"group_alive {zombie.pid}").returncode == 1
        assert shell("group_alive 99999999").returncode == 1  # no such group (above any pid_max)
        started = time.monotonic()
        assert shell(f"wait_group {group.pid} 0").returncode == 1
        assert shell(f"wait_group {group.pid} 10").returncode == 0
        assert time.monotonic() - started < 8 and not running(member)
    finally:
        zombie.wait()
        if running(member):
            os.kill(member, signal.SIGKILL)


def test_a_launch_never_signals_a_process_it_did_not_start(worker):
    """A pid file whose process is gone names a pid the kernel may have given to another process group since: the
    start time recorded beside it tells them apart."""
    home, env = worker
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)  # a group leader, as a job's wrapper is
    try:
        (home / "synpro_logs").mkdir()
        (home / "synpro_logs" / "r.pid").write_text(f"{other.pid} 1\n")
        done = run_remote(gcloud.launch("t", "z", None, ["synpro", "train"], "r"), env)
        assert done.returncode == 0 and "stopping" not in done.stderr, done
        assert wait_for(home / "synpro_logs" / "r.exit") == "3\n"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_status_read_gives_exit_and_heartbeat_age(worker):
    """The babysitter's one ssh to worker 0, run here: nothing yet; a running job's heartbeat age; an exit."""
    home, env = worker
    read = gcloud.read_status("t", "z", None, "r")
    assert read[-2] == "--worker=0"

    def status():
        def local(argv, capture=False):
            done = run_remote(argv, env)
            return gcloud.Result(done.returncode, done.stdout, done.stderr)

        args = type("Args", (), {"name": "t", "zone": "z", "project": None, "run_name": "r"})()
        return babysit.Babysitter(args, [], local).status()

    assert run_remote(read, env).stdout == "exit=\nheartbeat_age=\n"
    assert status() == (None, float("inf"))
    (home / "synpro_logs").mkdir()
    beat = home / "synpro_logs" / "r.heartbeat"
    beat.write_text("")
    os.utime(beat, (time.time() - 100, time.time() - 100))
    code, age = status()
    assert code is None and 99 <= age <= 110
    (home / "synpro_logs" / "r.exit").write_text("143\n")
    assert status()[0] == 143


def git(*args, cwd):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(cwd),
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_install_checks_out_the_ref_and_updates_on_rerun(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    git("init", "-q", "-b", "main", cwd=origin)
    commits = []
    for text in ("one", "two", "three"):
        (origin / "f.txt").write_text(text)
        git("add", "f.txt", cwd=origin)
        git("commit", "-q", "-m", text, cwd=origin)
        commits.append(git("rev-parse", "HEAD", cwd=origin))
    git("tag", "v1", commits[0], cwd=origin)
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "pip.log"}\n')
    (bin_dir / "python3").chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}", "GIT_CONFIG_NOSYSTEM": "1"}
    for ref, expected in (("v1", commits[0]), ("main", commits[2]), (commits[1], commits[1]), ("HEAD", commits[2])):
        [ssh] = gcloud.install("t", "z", None, repo=str(origin), ref=ref)
        done = run_remote(ssh, env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert git("rev-parse", "HEAD", cwd=home / "synpro_jax") == expected, ref
    uv_pip = f"-m uv pip install --python {home}/synpro_venv/bin/python"
    assert (tmp_path / "pip.log").read_text().splitlines() == [
        "-m pip install --user -U uv",
        f"-m uv venv --allow-existing --python 3.12 {home}/synpro_venv",
        f"{uv_pip} -U jax[tpu]",
        f"{uv_pip} -e .[tpu]",
    ] * 4


# A stand-in build backend (PEP 517 and 660) with no requirements, so the install test builds its packages offline:
# `synpro_standin` (the checkout, with a `synpro` console script) and `jax_standin` (in place of jax[tpu]).
STANDIN_BACKEND = """
import base64, hashlib, json, os, zipfile


def _build(directory, editable):
    spec = json.load(open("standin.json"))
    name = spec["name"]
    dist = name + "-0.1.dist-info"
    files = {dist + "/METADATA": "Metadata-Version: 2.1\\nName: " + name + "\\nVersion: 0.1\\nProvides-Extra: tpu\\n",
             dist + "/WHEEL": "Wheel-Version: 1.0\\nGenerator: standin\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
             dist + "/entry_points.txt": "[console_scripts]\\n" + "".join(
                 f"{k} = {v}\\n" for k, v in spec["scripts"].items())}
    if editable:
        files[name + ".pth"] = os.getcwd() + "\\n"
    else:
        files[name + ".py"] = open(name + ".py").read()
    wheel, record = name + "-0.1-py3-none-any.whl", []
    with zipfile.ZipFile(os.path.join(directory, wheel), "w") as z:
        for path, text in files.items():
            data = text.encode()
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        z.writestr(dist + "/RECORD", "\\n".join([*record, dist + "/RECORD,,"]) + "\\n")
    return wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _build(wheel_directory, editable=False)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _build(wheel_directory, editable=True)
"""


def standin_package(directory: Path, name: str, scripts: dict) -> Path:
    directory.mkdir(parents=True)
    (directory / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "standin_backend"\nbackend-path = ["."]\n'
    )
    (directory / "standin_backend.py").write_text(STANDIN_BACKEND)
    (directory / "standin.json").write_text(json.dumps({"name": name, "scripts": scripts}))
    (directory / f"{name}.py").write_text(f"def main():\n    print('{name} runs')\n")
    return directory


def _has_uv() -> bool:
    """uv importable by this interpreter, which is no venv (pip --user refuses to run inside one)."""
    import importlib.util

    return importlib.util.find_spec("uv") is not None and sys.prefix == sys.base_prefix


@pytest.mark.slow
@pytest.mark.parametrize("way", ["uv", "venv"])
def test_install_script_makes_a_python_311_venv_with_synpro(tmp_path, way):
    """The worker-side install run here for real in a fresh home: the same script text, with this machine's Python
    for the uv-managed 3.12 and a stand-in package for jax[tpu] (and one for the checkout), so nothing is
    downloaded. `uv`: pip finds uv installed (no index) and uv makes the venv; `venv`: python3 has no pip, so uv
    cannot be installed and the newest Python >= 3.11 on PATH makes it with `-m venv`."""
    if way == "uv" and not _has_uv():
        pytest.skip("uv is not installed in this (non-venv) Python: pip install uv")
    origin = standin_package(tmp_path / "origin", "synpro_standin", {"synpro": "synpro_standin:main"})
    git("init", "-q", "-b", "main", cwd=origin)
    git("add", ".", cwd=origin)
    git("commit", "-q", "-m", "stand-in", cwd=origin)
    jax = standin_package(tmp_path / "jax_standin", "jax_standin", {})
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    if way == "uv":
        python3 = sys.executable
    else:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
        python3 = str(tmp_path / "bare" / "bin" / "python")
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {shlex.quote(python3)} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    script = gcloud.worker_install_script(str(origin), "main", python=sys.executable, jax=str(jax))
    assert remote_command(
        shlex.join(gcloud.install("t", "z", None, str(origin), "main")[0])
    ) == gcloud.worker_install_script(str(origin), "main")  # what the workers get: 3.12 and jax[tpu] in its place
    env = {
        "HOME": str(home),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "GIT_CONFIG_NOSYSTEM": "1",
        "PIP_NO_INDEX": "1",
        "UV_OFFLINE": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    venv = home / "synpro_venv"
    assert ("uv = " in (venv / "pyvenv.cfg").read_text()) == (way == "uv")
    version = subprocess.run(
        [venv / "bin" / "python", "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tuple(map(int, version)) >= (3, 11)
    ran = subprocess.run([venv / "bin" / "synpro"], capture_output=True, text=True, check=True, env=env)
    assert ran.stdout == "synpro_standin runs\n"
    subprocess.run([venv / "bin" / "python", "-c", "import jax_standin"], check=True)
    # Rerun (an update): the venv is kept and the install runs again.
    again = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stdout + again.stderr


def test_scripts_run_the_commands_and_stop_at_a_failure(tmp_path):
    """Without --dry_run the same commands run, in order; a failing one ends the script with its exit status."""
    fake = tmp_path / "gcloud"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(tmp_path / 'calls')!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "sys.exit(7 if 'scp' in sys.argv else 0)\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    done = script("install", *WHERE, "--scp_from", ".", env=env)
    assert done.returncode == 7
    calls = [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]
    assert [["gcloud", *c] for c in calls] == [
        shlex.split(line) for line in dry("install", *WHERE, "--scp_from", ".")[:2]
    ]


# --- the babysitter ---

GONE = [None, "PREEMPTED", "TERMINATED", "SUSPENDED", "FAILED"]  # the last two: a queued resource's
PASSING = [
    "CREATING",
    "RESTARTING",
    "REPAIRING",
    "STOPPED",
    "UNKNOWN",
    "WAITING_FOR_RESOURCES",
    "PROVISIONING",
    "ACCEPTED",
    "SUSPENDING",
    "ACTIVE",
]


@pytest.mark.parametrize("state", [*GONE, "READY", *PASSING])
@pytest.mark.parametrize("exit_code", [None, 0, 1, 2, 126, 127, 137, 143])
@pytest.mark.parametrize("stale", [False, True])
def test_next_action_truth_table(state, exit_code, stale):
    if exit_code == 0:
        expected = "done"  # finished: never recreate a slice for a finished job
    elif exit_code in (2, 126, 127):
        expected = "give_up"  # a configuration error, a command that cannot run: the same command would fail again
    elif state in GONE:
        expected = "recreate"
    elif state != "READY":
        expected = "wait"  # passing states: look again later (a failure is relaunched once READY)
    elif exit_code == 143:
        expected = "relaunch"
    elif exit_code is not None:
        expected = "retry"  # a transient failure: relaunch after a backoff
    else:
        expected = "relaunch" if stale else "wait"
    assert babysit.next_action(state, exit_code, stale) == expected


def test_next_action_key_cases():
    assert babysit.next_action("READY", None) == "wait"  # running
    assert babysit.next_action("READY", None, stale=True) == "relaunch"  # hung
    assert babysit.next_action("READY", 143) == "relaunch"
    assert babysit.next_action("READY", 0) == "done"
    assert babysit.next_action("READY", 1) == "retry"
    assert babysit.next_action("READY", 137) == "retry"
    assert babysit.next_action("READY", 2) == "give_up"  # synpro's exit status for a configuration error
    assert babysit.next_action("PREEMPTED", None) == "recreate"
    assert babysit.next_action("TERMINATED", None) == "recreate"
    assert babysit.next_action(None, None) == "recreate"
    assert babysit.next_action("CREATING", None) == "wait"
    assert babysit.next_action("CREATING", None, stale=True) == "wait"
    assert babysit.next_action("WAITING_FOR_RESOURCES", None) == "wait"
    assert babysit.next_action("SUSPENDED", None) == "recreate"
    assert babysit.next_action("FAILED", None) == "recreate"


def test_backoff_doubles_up_to_an_hour():
    assert [babysit.backoff(n, 60) for n in range(8)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert babysit.backoff(0, 0) == 0
    assert babysit.backoff(3, 5000) == 5000  # a base over the cap is kept


class FakeGcloud:
    """Answers describe (tpu-vm's from `states`, queued-resources' from `queued`) and the status read from `exits`
    (an exit status, or (exit status, heartbeat age), or "error"); records every command; fails the commands whose
    verb (create, ssh, ...) or short name (install, launch: see verbs) is in `fail` once each."""

    def __init__(self, states, exits, fail=(), queued=()):
        self.states, self.exits, self.fail, self.queued = list(states), list(exits), list(fail), list(queued)
        self.calls = []

    def __call__(self, argv, capture=False):
        self.calls.append(argv)
        verb = argv[4]
        if verb == "describe":
            state = (self.queued if argv[3] == "queued-resources" else self.states).pop(0)
            if state == "error":
                return gcloud.Result(1, "", "ERROR: (gcloud) There was a problem refreshing your credentials.")
            if state is None:
                return gcloud.Result(
                    1,
                    "",
                    "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource "
                    "'projects/p/locations/z/nodes/t' was not found",
                )
            return gcloud.Result(0, state + "\n")
        if verb == "ssh" and "--worker=0" in argv:
            status = self.exits.pop(0)
            if status == "error":
                return gcloud.Result(255, "", "ssh: connect to host 10.0.0.2 port 22: Connection timed out")
            code, age = status if isinstance(status, tuple) else (status, 5)  # 5: running, it beat 5 s ago
            code, age = ("" if v is None else v for v in (code, age))
            return gcloud.Result(0, f"exit={code}\nheartbeat_age={age}\n")
        for name in (verb, self.short(argv)):
            if name in self.fail:
                self.fail.remove(name)
                return gcloud.Result(1)
        return gcloud.Result(0)

    @staticmethod
    def short(argv):
        if argv[4] == "ssh":
            command = argv[-1]
            return "exit" if "--worker=0" in argv else "launch" if "synpro_logs" in command else "install"
        return ("q" if argv[3] == "queued-resources" else "") + argv[4]

    def verbs(self):
        """The calls, short: describe, exit (the status read), create, delete, install, launch, scp; q-prefixed for
        queued resources (qdescribe, qcreate, qdelete)."""
        return [self.short(argv) for argv in self.calls]


class FakeClock:
    """The babysitter's clock and sleep: sleeping moves the clock; every sleep is recorded."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def sit(fake, *extra, clock=None):
    clock = clock or FakeClock()
    return babysit.main(
        [
            *WHERE,
            "--accelerator_type",
            "v4-32",
            "--spot",
            "--repo",
            "https://g/r.git",
            "--poll_s",
            "5",
            *extra,
            "--",
            *GIN,
        ],
        runner=fake,
        sleep=clock.sleep,
        clock=clock,
    )


def test_babysit_recreates_a_preempted_slice_and_stops_when_the_job_is_done():
    fake = FakeGcloud(states=["READY", "PREEMPTED", "READY"], exits=[None, 0])
    assert sit(fake) == 0
    assert fake.verbs() == ["describe", "exit", "describe", "delete", "create", "install", "launch", "describe", "exit"]
    # the cycle is exactly what --dry_run prints, after a non-interactive delete
    name = ["synpro-v4", "--zone=us-central2-b", "--project=my-proj"]
    assert fake.calls[3] == [*gcloud.TPU_VM, "delete", *name, "--quiet"]
    assert [shlex.join(c) for c in fake.calls[4:7]] == dry(
        "babysit", *WHERE, "--accelerator_type", "v4-32", "--spot", "--repo", "https://g/r.git", "--", *GIN
    )
    assert fake.calls[0] == [*gcloud.TPU_VM, "describe", *name, "--format=value(state)"]
    assert shlex.join(fake.calls[1]) == ssh_line(
        """echo "exit=$(cat "$HOME/synpro_logs/synpro-v4.exit" 2>/dev/null)"; """
        """if t=$(stat -c %Y "$HOME/synpro_logs/synpro-v4.heartbeat" 2>/dev/null); then """
        """echo "heartbeat_age=$(( $(date +%s) - t ))"; else echo heartbeat_age=; fi""",
        worker="0",
    )


def test_babysit_relaunches_after_sigterm_and_creates_a_missing_slice():
    fake = FakeGcloud(states=[None, "CREATING", "READY", "READY", "READY"], exits=[None, 143, 0])
    assert sit(fake) == 0
    assert fake.verbs() == [
        "describe",
        "create",
        "install",
        "launch",
        "describe",
        "describe",
        "exit",
        "describe",
        "exit",
        "launch",
        "describe",
        "exit",
    ]


def test_babysit_relaunches_a_job_whose_heartbeat_is_stale():
    """--stale_s 200, a poll every 10 s (clock seconds): a job that stopped beating is relaunched once its heartbeat
    and its launch are both older than 200 s; after the relaunch it has no heartbeat yet, and gets 200 s again."""
    clock = FakeClock()
    # At t=0 the babysitter starts (the job's launch is taken to be now). Polls at t=0, 10, ..., 200, 210.
    ages = [(None, 100 + t) for t in range(0, 210, 10)]  # last beat at t=-100: stale once t > 200 (and age > 200)
    fresh = [(None, None)] * 20 + [(None, 6), (0, None)]  # none for 200 s after the relaunch: not stale; then beats
    fake = FakeGcloud(states=["READY"] * 100, exits=[*ages, (None, 310), *fresh])
    assert sit(fake, "--stale_s", "200", "--poll_s", "10", clock=clock) == 0
    verbs = fake.verbs()
    assert verbs.count("launch") == 1
    assert verbs.index("launch") == 2 * 22  # after the 22nd status read (t=210: age 310 and launched 210 s ago)
    assert verbs[-2:] == ["describe", "exit"] and len(verbs) == 2 * 22 + 1 + 2 * 22


def test_babysit_does_not_call_a_job_stale_when_its_status_cannot_be_read():
    fake = FakeGcloud(states=["READY"] * 4, exits=["error", "error", "error", 0])
    assert sit(fake, "--stale_s", "200", "--poll_s", "1000") == 0  # 3000 s without a status read
    assert "launch" not in fake.verbs()


def test_babysit_without_heartbeat_check():
    """--stale_s 0: a command that does not beat (synpro eval, a script) is never taken to be hung."""
    fake = FakeGcloud(states=["READY"] * 3, exits=[(None, None), (None, None), 0])
    clock = FakeClock()
    assert sit(fake, "--stale_s", "0", "--poll_s", "5000", clock=clock) == 0
    assert "launch" not in fake.verbs()


def test_babysit_relaunches_a_transient_failure_after_a_doubling_backoff():
    """exit 1 (an XLA or storage error): relaunched after --backoff_s, 2x, ...; a job that beats again after its
    launch resets the count."""
    fake = FakeGcloud(states=["READY"] * 7, exits=[1, 1, (None, 2), 1, 137, 0])
    clock = FakeClock()
    assert sit(fake, "--backoff_s", "10", clock=clock) == 0
    assert fake.verbs() == [
        "describe",
        "exit",
        "launch",
        "describe",
        "exit",
        "launch",
        "describe",
        "exit",
        "describe",
        "exit",
        "launch",
        "describe",
        "exit",
        "launch",
        "describe",
        "exit",
    ]
    # backoff, poll; the heartbeat 2 s old, newer than the launch 5 s ago, resets it
    assert clock.sleeps == [10, 5, 20, 5, 5, 10, 5, 20, 5]


def test_babysit_gives_up_on_a_configuration_error():
    for code in (2, 127):
        fake = FakeGcloud(states=["READY"], exits=[code])
        assert sit(fake) == 1
        assert fake.verbs() == ["describe", "exit"]


def test_babysit_gives_up_after_max_restarts():
    fake = FakeGcloud(states=["READY"] * 3, exits=[1, 1, 1])
    assert sit(fake, "--max_restarts", "2") == 1
    assert fake.verbs() == ["describe", "exit", "launch"] * 2 + ["describe", "exit"]
    fake = FakeGcloud(states=["PREEMPTED", "PREEMPTED", "PREEMPTED"], exits=[])
    assert sit(fake, "--max_restarts", "2") == 1
    assert fake.verbs() == ["describe", "delete", "create", "install", "launch"] * 2 + ["describe"]
    fake = FakeGcloud(states=["READY"] * 2, exits=[143, 1])  # relaunches of every kind count
    assert sit(fake, "--max_restarts", "1") == 1
    assert fake.verbs() == ["describe", "exit", "launch", "describe", "exit"]


def test_babysit_retries_a_failed_create_and_a_failed_install():
    """No Spot capacity: create is retried each poll; an install that fails on a new slice is finished on the next
    poll before anything else is read."""
    fake = FakeGcloud(states=[None, None, "READY", "READY"], exits=[0], fail=["create", "ssh"])
    assert sit(fake) == 0
    assert fake.verbs() == [
        "describe",
        "create",
        "describe",
        "create",
        "install",
        "describe",
        "install",
        "launch",
        "describe",
        "exit",
    ]


def test_babysit_stale_s_floor_is_twice_the_heartbeat_interval():
    """A job beats at most once per synpro_jax/heartbeat.py's interval, so --stale_s under twice that would call
    every healthy job hung; 0 (off) and exactly twice are accepted."""
    assert babysit.HEARTBEAT_INTERVAL_S == heartbeat.DEFAULT_INTERVAL_S == 60
    base = ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--repo", "r"]
    for ok in ("0", "120", "1800"):
        assert dry("babysit", *base, "--stale_s", ok, "--", "x")


def test_babysit_gives_up_on_an_install_that_always_fails(capsys):
    """A bad --ref or a repo the workers cannot reach fails the install on every poll: after --max_restarts failures
    in a row it gives up, naming the command; a failed create (no capacity) is still never counted."""
    fake = FakeGcloud(states=[None, None, *["READY"] * 10], exits=[], fail=["create", *["ssh"] * 10])
    assert sit(fake, "--max_restarts", "3") == 1
    assert fake.verbs() == [
        "describe",
        "create",
        "describe",
        "create",
        "install",
        "describe",
        "install",
        "describe",
        "install",
    ]
    last = capsys.readouterr().err.splitlines()[-1]
    install = shlex.join(gcloud.install("synpro-v4", "us-central2-b", "my-proj", "https://g/r.git")[0])
    assert last.endswith(f"] giving up after 3 failures in a row (--max_restarts=3) of: {install}")


def test_babysit_gives_up_on_a_launch_that_always_fails_and_counts_only_failures_in_a_row(capsys):
    # the install fails twice, then works; the launch fails twice, then works: never 3 in a row
    fake = FakeGcloud(states=[None, *["READY"] * 5], exits=[0], fail=["install", "install", "launch", "launch"])
    assert sit(fake, "--max_restarts", "3") == 0
    assert fake.verbs() == [
        "describe",
        "create",
        "install",
        "describe",
        "install",
        "describe",
        "install",
        "launch",
        "describe",
        "launch",
        "describe",
        "launch",
        "describe",
        "exit",
    ]
    # a relaunch (exit 143) whose launch keeps failing
    fake = FakeGcloud(states=["READY"] * 5, exits=[143], fail=["ssh"] * 10)
    assert sit(fake, "--max_restarts", "2") == 1
    assert fake.verbs() == ["describe", "exit", "launch", "describe", "launch"]
    launch = shlex.join(gcloud.launch("synpro-v4", "us-central2-b", "my-proj", GIN, "synpro-v4"))
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(f"] giving up after 2 failures in a row (--max_restarts=2) of: {launch}")
    )


def test_babysit_installs_a_slice_whose_create_reported_failure():
    """gcloud can report a create as failed (a timeout) while the slice still comes up: it gets installed."""
    fake = FakeGcloud(states=[None, "READY", "READY"], exits=[0], fail=["create"])
    assert sit(fake) == 0
    assert fake.verbs() == ["describe", "create", "describe", "install", "launch", "describe", "exit"]


def test_babysit_never_deletes_on_a_describe_error():
    fake = FakeGcloud(states=["error", "READY"], exits=[0])
    assert sit(fake) == 0
    assert fake.verbs() == ["describe", "describe", "exit"]


def test_babysit_queued_resource_through_its_states():
    """--queued: no queued resource -> request one; WAITING_FOR_RESOURCES, PROVISIONING, ACCEPTED, SUSPENDING: wait;
    ACTIVE: the node's state decides (install and launch once it is READY; wait while it cannot be seen);
    SUSPENDED (its node was preempted) or FAILED (not provisioned): delete --force, request again."""
    fake = FakeGcloud(
        queued=[
            None,
            "WAITING_FOR_RESOURCES",
            "PROVISIONING",
            "ACTIVE",
            "ACTIVE",
            "ACTIVE",
            "SUSPENDING",
            "SUSPENDED",
            "FAILED",
            "ACCEPTED",
            "ACTIVE",
            "ACTIVE",
            "ACTIVE",
        ],
        states=["CREATING", "READY", "READY", None, "READY", "READY"],
        exits=[None, 0],
    )
    assert sit(fake, "--queued") == 0
    assert fake.verbs() == [
        "qdescribe",
        "qcreate",  # none: requested; its node does not exist yet, so nothing is installed now
        "qdescribe",
        "qdescribe",  # in the queue, then provisioning
        "qdescribe",
        "describe",  # ACTIVE, its node CREATING
        "qdescribe",
        "describe",
        "install",
        "launch",  # ACTIVE, its node READY: the owed install and launch
        "qdescribe",
        "describe",
        "exit",  # the job runs
        "qdescribe",  # SUSPENDING
        "qdescribe",
        "qdelete",
        "qcreate",  # SUSPENDED
        "qdescribe",
        "qdelete",
        "qcreate",  # FAILED
        "qdescribe",  # ACCEPTED
        "qdescribe",
        "describe",  # ACTIVE, its node not seen yet: nothing deleted
        "qdescribe",
        "describe",
        "install",
        "launch",
        "qdescribe",
        "describe",
        "exit",
    ]  # exit 0
    name = ["synpro-v4", "--zone=us-central2-b", "--project=my-proj"]
    assert fake.calls[0] == [*gcloud.QUEUED, "describe", *name, "--format=value(state.state)"]
    assert fake.calls[1] == [
        *gcloud.QUEUED,
        "create",
        "synpro-v4",
        "--node-id=synpro-v4",
        *name[1:],
        "--accelerator-type=v4-32",
        "--runtime-version=tpu-ubuntu2204-base",
        "--spot",
    ]
    assert fake.calls[15] == [*gcloud.QUEUED, "delete", *name, "--force", "--quiet"]
    assert fake.calls[5] == [*gcloud.TPU_VM, "describe", *name, "--format=value(state)"]


def test_babysit_queued_recreates_a_preempted_node_of_an_active_resource():
    """A node PREEMPTED before its queued resource moved on is recreated the same way; restarts count as ever."""
    fake = FakeGcloud(queued=["ACTIVE", "SUSPENDED"], states=["PREEMPTED"], exits=[])
    assert sit(fake, "--queued", "--max_restarts", "1") == 1
    assert fake.verbs() == ["qdescribe", "describe", "qdelete", "qcreate", "qdescribe"]


def test_babysit_script_reads_gcloud_output(tmp_path):
    """The script as run, against a gcloud on PATH that prints a READY slice and a job that exited 0."""
    fake = tmp_path / "gcloud"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\n"
        "if 'describe' in sys.argv: print('READY')\n"
        "elif '--worker=0' in sys.argv: print('exit=0'); print('heartbeat_age=')\n"
        "else: sys.exit(1)\n"
    )
    fake.chmod(0o755)
    done = script(
        "babysit",
        *WHERE,
        "--accelerator_type",
        "v4-32",
        "--repo",
        "r",
        "--",
        "synpro",
        "train",
        env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("state=READY exit=0 heartbeat=none -> done")


def test_readme_commands_parse():
    """Every `python tpu/...` command in tpu/README.md is accepted as written."""
    text = (REPO / "tpu" / "README.md").read_text().replace("\\\n", " ")
    commands = [shlex.split(line) for line in text.splitlines() if line.startswith("python tpu/")]
    assert len(commands) == 13
    flags = {arg for argv in commands for arg in argv if arg.startswith("--")}
    assert {"--queued", "--stale_s", "--backoff_s", "--max_restarts"} <= flags
    for argv in commands:
        name = Path(argv[1]).stem
        assert dry(name, *argv[2:]), argv


def test_venv_fallback_tries_the_newest_python_first():
    """Without uv the newest python3.1x >= 3.11 makes the venv (tpu/README.md): 3.13 before 3.12 before 3.11."""

    def order(python):
        return re.search(r"for c in ([^;]+); do", gcloud.worker_install_script(python=python)).group(1).split()

    assert order(gcloud.PYTHON) == ["python3.13", "python3.12", "python3.11"]
    assert order("3.14") == ["python3.14", "python3.13", "python3.12", "python3.11"]
    assert order("/opt/py/bin/python3") == ["/opt/py/bin/python3", "python3.13", "python3.12", "python3.11"]


def test_the_workers_venv_python_meets_setup_py():
    """setup.py asks for the Python jax>=0.7 needs; the venv tpu/install.py makes on the workers has it (the stock
    runtimes' 3.10 does not)."""
    required = re.search(r'python_requires="([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    assert required == ">=3.11"
    assert tuple(map(int, gcloud.PYTHON.split("."))) >= (3, 11)
