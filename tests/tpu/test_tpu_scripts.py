"""The tpu/ launch scripts: the exact gcloud commands they print with --dry_run, their one-line errors, the remote
shell commands they send (run here with bash, HOME pointing at a temporary directory, fake `synpro` and `python3`),
and the babysitter's decisions against a fake gcloud. No network, no gcloud."""

import atexit
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tpu"))
import babysit  # noqa: E402
import gcloud  # noqa: E402

WHERE = ["--name", "synpro-v4", "--zone", "us-central2-b", "--project", "my-proj"]
GIN = ["synpro", "train", "--gin_file=gin/experiments/olmo_400m_dclm.gin", '--gin.OUT_DIR="gs://b/run"',
       "--gin.LIST=[1, 2]"]
SSH = "gcloud compute tpus tpu-vm ssh synpro-v4 --zone=us-central2-b --project=my-proj --worker=all"
PIP = ("python3 -m pip install -U pip; python3 -m pip install -U '\"'\"'jax[tpu]'\"'\"'; "
       "python3 -m pip install -e .")
LAUNCH = (
    SSH + """ '--command=set -e; export PATH="$HOME/.local/bin:$PATH"; mkdir -p "$HOME/synpro_logs"; """
    """cd "$HOME/synpro_jax"; rm -f "$HOME/synpro_logs/synpro-v4.exit"; ( set +e; trap "" HUP; trap : TERM; """
    """synpro train --gin_file=gin/experiments/olmo_400m_dclm.gin '"'"'--gin.OUT_DIR="gs://b/run"'"'"' """
    """'"'"'--gin.LIST=[1, 2]'"'"' >> "$HOME/synpro_logs/synpro-v4.log" 2>&1; code=$?; """
    """echo $code > "$HOME/synpro_logs/synpro-v4.exit.tmp"; """
    """mv -f "$HOME/synpro_logs/synpro-v4.exit.tmp" "$HOME/synpro_logs/synpro-v4.exit" ) """
    """> /dev/null 2>&1 < /dev/null &'""")


# The scripts run with a `gcloud` first on PATH that fails: a test that forgot --dry_run must not reach a real one.
_GUARD = tempfile.mkdtemp(prefix="synpro-tpu-tests-")
atexit.register(shutil.rmtree, _GUARD, ignore_errors=True)
Path(_GUARD, "gcloud").write_text("#!/bin/sh\necho 'tests: a real gcloud call' >&2\nexit 99\n")
Path(_GUARD, "gcloud").chmod(0o755)
GUARDED = {**os.environ, "PATH": f"{_GUARD}{os.pathsep}{os.environ['PATH']}"}


def script(name, *args, env=None):
    return subprocess.run([sys.executable, f"tpu/{name}.py", *args], cwd=REPO, capture_output=True, text=True,
                          env=env or GUARDED, timeout=30)


def dry(name, *args) -> list[str]:
    done = script(name, "--dry_run", *args)  # before any `--`, after which it would belong to the command
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.splitlines()


def remote_command(line: str) -> str:
    """The shell command an ssh line sends to the workers, as gcloud would receive it."""
    argv = shlex.split(line)
    assert argv[-1].startswith("--command=")
    return argv[-1][len("--command="):]


# --- dry runs: the exact commands ---

def test_create_dry_run():
    assert dry("create", *WHERE, "--accelerator_type", "v4-32", "--spot") == [
        "gcloud compute tpus tpu-vm create synpro-v4 --zone=us-central2-b --project=my-proj --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --spot"]
    assert dry("create", "--name", "synpro-v5e", "--zone", "us-west4-a", "--accelerator_type", "v5litepod-8") == [
        "gcloud compute tpus tpu-vm create synpro-v5e --zone=us-west4-a --accelerator-type=v5litepod-8 "
        "--version=v2-alpha-tpuv5-lite"]
    assert dry("create", *WHERE, "--accelerator_type", "v4-8", "--version", "tpu-vm-base", "--preemptible") == [
        "gcloud compute tpus tpu-vm create synpro-v4 --zone=us-central2-b --project=my-proj --accelerator-type=v4-8 "
        "--version=tpu-vm-base --preemptible"]
    assert dry("create", *WHERE, "--accelerator_type", "v6e-16", "--reserved")[0].endswith(
        "--accelerator-type=v6e-16 --version=v2-alpha-tpuv6e --reserved")


@pytest.mark.parametrize("accelerator, version", [
    ("v2-8", "tpu-ubuntu2204-base"), ("v3-32", "tpu-ubuntu2204-base"), ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_default_runtime_per_generation(accelerator, version):
    assert gcloud.create("t", "z", None, accelerator)[-1] == f"--version={version}"


def test_delete_dry_run():
    assert dry("delete", *WHERE) == ["gcloud compute tpus tpu-vm delete synpro-v4 --zone=us-central2-b "
                                     "--project=my-proj"]
    assert dry("delete", *WHERE, "--yes") == ["gcloud compute tpus tpu-vm delete synpro-v4 --zone=us-central2-b "
                                              "--project=my-proj --quiet"]


def test_install_from_git_dry_run():
    assert dry("install", *WHERE, "--repo", "https://github.com/o/synpro_jax.git", "--ref", "v0.3") == [
        SSH + """ '--command=set -e; if [ ! -d "$HOME/synpro_jax/.git" ]; then git clone """
        """https://github.com/o/synpro_jax.git "$HOME/synpro_jax"; fi; cd "$HOME/synpro_jax"; """
        """git remote set-url origin https://github.com/o/synpro_jax.git; git fetch --force --tags origin; """
        """{ git fetch origin v0.3 && git checkout --force --detach FETCH_HEAD; } || """
        f"""git checkout --force --detach v0.3; {PIP}'"""]


def test_install_by_scp_dry_run():
    assert dry("install", *WHERE, "--scp_from", ".") == [
        SSH + """ '--command=rm -rf "$HOME/synpro_jax"'""",
        "gcloud compute tpus tpu-vm scp --recurse . 'synpro-v4:~/synpro_jax' --worker=all --zone=us-central2-b "
        "--project=my-proj",
        SSH + f""" '--command=set -e; cd "$HOME/synpro_jax"; {PIP}'"""]


def test_launch_dry_run_quotes_the_command():
    assert dry("launch", *WHERE, "--", *GIN) == [LAUNCH]


def test_launch_attached_dry_run():
    [line] = dry("launch", *WHERE, "--run_name", "r1", "--attach", "--", "synpro", "train", "--gin.LIST=[1, 2]")
    assert remote_command(line) == (
        """set -e; export PATH="$HOME/.local/bin:$PATH"; mkdir -p "$HOME/synpro_logs"; cd "$HOME/synpro_jax"; """
        """rm -f "$HOME/synpro_logs/r1.exit"; synpro train '--gin.LIST=[1, 2]' 2>&1 | """
        """tee -a "$HOME/synpro_logs/r1.log"; code=${PIPESTATUS[0]}; echo $code > "$HOME/synpro_logs/r1.exit.tmp"; """
        """mv -f "$HOME/synpro_logs/r1.exit.tmp" "$HOME/synpro_logs/r1.exit"; exit $code""")


def test_babysit_dry_run_prints_one_cycle():
    lines = dry("babysit", *WHERE, "--accelerator_type", "v4-32", "--spot", "--scp_from", ".", "--", *GIN)
    assert lines == [
        "gcloud compute tpus tpu-vm create synpro-v4 --zone=us-central2-b --project=my-proj --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --spot",
        *dry("install", *WHERE, "--scp_from", "."),
        LAUNCH]


# --- bad input: exit 2, one line naming the flag ---

@pytest.mark.parametrize("name, args, flag", [
    ("create", ["--name", "Synpro", "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
    ("create", ["--name", "1tpu", "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
    ("create", ["--name", "tpu_a", "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
    ("create", ["--name", "tpu-", "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
    ("create", ["--name", "t" * 64, "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
    ("create", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v5e-8"], "--accelerator_type"),
    ("create", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4"], "--accelerator_type"),
    ("create", ["--name", "tpu", "--zone", "z", "--accelerator_type", "V4-8"], "--accelerator_type"),
    ("create", ["--name", "tpu", "--accelerator_type", "v4-8"], "--zone"),
    ("create", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--spot", "--preemptible"],
     "--preemptible"),
    ("install", ["--name", "tpu", "--zone", "z"], "--repo"),
    ("install", ["--name", "tpu", "--zone", "z", "--repo", "r", "--scp_from", "."], "--scp_from"),
    ("install", ["--name", "tpu", "--zone", "z", "--scp_from", "no/such/dir"], "--scp_from"),
    ("install", ["--name", "tpu", "--zone", "z", "--scp_from", ".", "--ref", "main"], "--ref"),
    ("launch", ["--name", "tpu", "--zone", "z", "synpro", "train"], "--"),
    ("launch", ["--name", "tpu", "--zone", "z"], "--"),
    ("launch", ["--name", "tpu", "--zone", "z", "--"], "--"),
    ("launch", ["--name", "tpu", "--zone", "z", "--run_name", "a/b", "--", "synpro"], "--run_name"),
    ("babysit", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--repo", "r"], "--"),
    ("babysit", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v9-8", "--repo", "r", "--", "x"],
     "--accelerator_type"),
    ("babysit", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--", "x"], "--repo"),
    ("babysit", ["--name", "tpu", "--zone", "z", "--accelerator_type", "v4-8", "--repo", "r", "--poll_s", "0",
                 "--", "x"], "--poll_s"),
    ("delete", ["--name", "my.tpu", "--zone", "z"], "--name"),
])
def test_bad_input_is_one_line_naming_the_flag(name, args, flag):
    done = script(name, "--dry_run", *args)
    assert done.returncode == 2, done
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"{name}.py: error: "), line
    assert re.search(rf"(^|\s){re.escape(flag)}([:,\s]|$)", line[len(f"{name}.py: error: "):]), line


def test_script_flags_give_a_script_the_same_arguments():
    """What `synpro sweep --launcher=tpu` prints a babysit.py line with, for each slice it launched."""
    argv = [*WHERE, "--accelerator_type", "v4-32", "--spot", "--repo", "https://g/r.git", "--ref", "v1",
            "--run_name", "r1", "--", "synpro", "train"]
    p = gcloud.parser("babysit.py", "")
    gcloud.add_accelerator(p)
    gcloud.add_install(p)
    gcloud.add_run_name(p)
    args, command = gcloud.parse_with_command(p, argv)
    assert gcloud.script_flags(args) + ["--", *command] == argv
    args.run_name = args.name  # the default is left out
    assert "--run_name" not in gcloud.script_flags(args)


def test_longest_valid_name():
    assert dry("delete", "--name", "t" * 63, "--zone", "z")


# --- the remote commands, run here with bash as the workers' login shell would ---

FAKE_SYNPRO = f"""#!{sys.executable}
import json, os, signal, sys, time
print(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}), flush=True)
if os.environ.get("FAKE_MODE") == "wait_for_sigterm":  # as a synpro job: save, then exit 143
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with open(os.environ["FAKE_PIDS"] + ".tmp", "w") as f:
        f.write(f"{{os.getpid()}} {{os.getppid()}}")
    os.rename(os.environ["FAKE_PIDS"] + ".tmp", os.environ["FAKE_PIDS"])  # never seen half written
    time.sleep(30)
sys.exit(3)
"""


@pytest.fixture
def worker(tmp_path):
    """A stand-in worker: a home directory with a checkout and a fake `synpro` in ~/.local/bin."""
    home = tmp_path / "home"
    (home / "synpro_jax").mkdir(parents=True)
    (home / ".local" / "bin").mkdir(parents=True)
    fake = home / ".local" / "bin" / "synpro"
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


def test_launched_command_reaches_the_job_intact(worker):
    home, env = worker
    command = GIN + ["--gin.ORGANIC=['/d/*.jsonl.zst']", "it's", "$HOME", "a;b"]
    ssh = gcloud.launch("t", "z", None, command, "run1")
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", remote_command(shlex.join(ssh))], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and done.stdout == "", done
    assert time.monotonic() - started < 5  # detached: the ssh returns without waiting for the job
    assert wait_for(home / "synpro_logs" / "run1.exit") == "3\n"
    record = json.loads((home / "synpro_logs" / "run1.log").read_text())
    assert record == {"argv": command[1:], "cwd": str(home / "synpro_jax")}
    assert not (home / "synpro_logs" / "run1.exit.tmp").exists()


def test_attached_launch_streams_and_returns_the_exit_status(worker):
    home, env = worker
    (home / "synpro_logs").mkdir()
    (home / "synpro_logs" / "r.exit").write_text("143\n")  # a previous run's status is cleared at launch
    ssh = gcloud.launch("t", "z", None, GIN, "r", attach=True)
    done = subprocess.run(["bash", "-c", remote_command(shlex.join(ssh))], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 3
    assert json.loads(done.stdout)["argv"] == GIN[1:]
    assert (home / "synpro_logs" / "r.log").read_text() == done.stdout
    assert (home / "synpro_logs" / "r.exit").read_text() == "3\n"


def test_sigterm_to_every_process_records_143(worker):
    """A preemption or maintenance event SIGTERMs every process: the job saves and exits 143, and the shell around
    it survives long enough to record that."""
    home, env = worker
    ssh = gcloud.launch("t", "z", None, ["synpro", "train"], "r")
    subprocess.run(["bash", "-c", remote_command(shlex.join(ssh))], env={**env, "FAKE_MODE": "wait_for_sigterm"},
                   check=True, timeout=30)
    job, wrapper = map(int, wait_for(Path(env["FAKE_PIDS"])).split())
    assert job > 1 and wrapper > 1 and wrapper != os.getpid()
    os.kill(wrapper, signal.SIGTERM)
    os.kill(job, signal.SIGTERM)
    assert wait_for(home / "synpro_logs" / "r.exit") == "143\n"


def git(*args, cwd):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd)}
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
    (bin_dir / "python3").write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path / 'pip.log'}\n")
    (bin_dir / "python3").chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}", "GIT_CONFIG_NOSYSTEM": "1"}
    for ref, expected in (("v1", commits[0]), ("main", commits[2]), (commits[1], commits[1]), ("HEAD", commits[2])):
        [ssh] = gcloud.install("t", "z", None, repo=str(origin), ref=ref)
        done = subprocess.run(["bash", "-c", remote_command(shlex.join(ssh))], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert git("rev-parse", "HEAD", cwd=home / "synpro_jax") == expected, ref
    assert (tmp_path / "pip.log").read_text().splitlines() == ["-m pip install -U pip", "-m pip install -U jax[tpu]",
                                                               "-m pip install -e ."] * 4


def test_scripts_run_the_commands_and_stop_at_a_failure(tmp_path):
    """Without --dry_run the same commands run, in order; a failing one ends the script with its exit status."""
    fake = tmp_path / "gcloud"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(tmp_path / 'calls')!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    "sys.exit(7 if 'scp' in sys.argv else 0)\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    done = script("install", *WHERE, "--scp_from", ".", env=env)
    assert done.returncode == 7
    calls = [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]
    assert [["gcloud", *c] for c in calls] == [shlex.split(line) for line in dry("install", *WHERE, "--scp_from",
                                                                                  ".")[:2]]


# --- the babysitter ---

GONE, PASSING = [None, "PREEMPTED", "TERMINATED"], ["CREATING", "RESTARTING", "REPAIRING", "STOPPED", "UNKNOWN"]


@pytest.mark.parametrize("state", GONE + ["READY"] + PASSING)
@pytest.mark.parametrize("exit_code", [None, 0, 1, 2, 137, 143])
def test_next_action_truth_table(state, exit_code):
    if exit_code == 0:
        expected = "done"  # finished: never recreate a slice for a finished job
    elif exit_code != 143 and exit_code is not None:
        expected = "give_up"  # a real failure: the same command would fail again
    elif state in GONE:
        expected = "recreate"
    elif state == "READY":
        expected = {None: "wait", 143: "relaunch"}[exit_code]
    else:
        expected = "wait"  # passing states: look again later (143 relaunches once READY)
    assert babysit.next_action(state, exit_code) == expected


def test_next_action_key_cases():
    assert babysit.next_action("READY", None) == "wait"
    assert babysit.next_action("READY", 143) == "relaunch"
    assert babysit.next_action("READY", 0) == "done"
    assert babysit.next_action("READY", 1) == "give_up"
    assert babysit.next_action("PREEMPTED", None) == "recreate"
    assert babysit.next_action("TERMINATED", None) == "recreate"
    assert babysit.next_action(None, None) == "recreate"
    assert babysit.next_action("CREATING", None) == "wait"


class FakeGcloud:
    """Answers describe and the exit-status read from scripts; records every command; fails the commands whose
    verb is in `fail` once each."""

    def __init__(self, states, exits, fail=()):
        self.states, self.exits, self.fail, self.calls = list(states), list(exits), list(fail), []

    def __call__(self, argv, capture=False):
        self.calls.append(argv)
        verb = argv[4]
        if verb == "describe":
            state = self.states.pop(0)
            if state == "error":
                return gcloud.Result(1, "", "ERROR: (gcloud) There was a problem refreshing your credentials.")
            if state is None:
                return gcloud.Result(1, "", "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource "
                                            "'projects/p/locations/z/nodes/t' was not found")
            return gcloud.Result(0, state + "\n")
        if verb == "ssh" and "--worker=0" in argv:
            code = self.exits.pop(0)
            return gcloud.Result(0, "" if code is None else f"{code}\n")
        if verb in self.fail:
            self.fail.remove(verb)
            return gcloud.Result(1)
        return gcloud.Result(0)

    def verbs(self):
        """The calls, short: describe, exit (the status read), create, delete, install, launch, scp."""
        def short(argv):
            if argv[4] == "ssh":
                command = argv[-1]
                return "exit" if "--worker=0" in argv else "launch" if "synpro_logs" in command else "install"
            return argv[4]
        return [short(argv) for argv in self.calls]


def sit(fake, *extra):
    return babysit.main([*WHERE, "--accelerator_type", "v4-32", "--spot", "--repo", "https://g/r.git",
                         "--poll_s", "5", *extra, "--", *GIN], runner=fake, sleep=lambda s: None)


def test_babysit_recreates_a_preempted_slice_and_stops_when_the_job_is_done():
    fake = FakeGcloud(states=["READY", "PREEMPTED", "READY"], exits=[None, 0])
    assert sit(fake) == 0
    assert fake.verbs() == ["describe", "exit", "describe", "delete", "create", "install", "launch", "describe",
                            "exit"]
    # the cycle is exactly what --dry_run prints, after a non-interactive delete
    name = ["synpro-v4", "--zone=us-central2-b", "--project=my-proj"]
    assert fake.calls[3] == [*gcloud.TPU_VM, "delete", *name, "--quiet"]
    assert [shlex.join(c) for c in fake.calls[4:7]] == dry(
        "babysit", *WHERE, "--accelerator_type", "v4-32", "--spot", "--repo", "https://g/r.git", "--", *GIN)
    assert fake.calls[0] == [*gcloud.TPU_VM, "describe", *name, "--format=value(state)"]
    assert fake.calls[1][-2:] == ["--worker=0", '--command=cat "$HOME/synpro_logs/synpro-v4.exit" 2>/dev/null || true']


def test_babysit_relaunches_after_sigterm_and_creates_a_missing_slice():
    fake = FakeGcloud(states=[None, "CREATING", "READY", "READY", "READY"], exits=[None, 143, 0])
    assert sit(fake) == 0
    assert fake.verbs() == ["describe", "create", "install", "launch", "describe", "describe", "exit", "describe",
                            "exit", "launch", "describe", "exit"]


def test_babysit_retries_a_failed_create_and_a_failed_install():
    """No Spot capacity: create is retried each poll; an install that fails on a new slice is finished on the next
    poll before anything else is read."""
    fake = FakeGcloud(states=[None, None, "READY", "READY"], exits=[0], fail=["create", "ssh"])
    assert sit(fake) == 0
    assert fake.verbs() == ["describe", "create", "describe", "create", "install", "describe", "install", "launch",
                            "describe", "exit"]


def test_babysit_installs_a_slice_whose_create_reported_failure():
    """gcloud can report a create as failed (a timeout) while the slice still comes up: it gets installed."""
    fake = FakeGcloud(states=[None, "READY", "READY"], exits=[0], fail=["create"])
    assert sit(fake) == 0
    assert fake.verbs() == ["describe", "create", "describe", "install", "launch", "describe", "exit"]


def test_babysit_never_deletes_on_a_describe_error():
    fake = FakeGcloud(states=["error", "READY"], exits=[0])
    assert sit(fake) == 0
    assert fake.verbs() == ["describe", "describe", "exit"]


def test_babysit_script_reads_gcloud_output(tmp_path):
    """The script as run, against a gcloud on PATH that prints a READY slice and a job that exited 0."""
    fake = tmp_path / "gcloud"
    fake.write_text(f"#!{sys.executable}\nimport sys\n"
                    "if 'describe' in sys.argv: print('READY')\n"
                    "elif '--worker=0' in sys.argv: print('0')\n"
                    "else: sys.exit(1)\n")
    fake.chmod(0o755)
    done = script("babysit", *WHERE, "--accelerator_type", "v4-32", "--repo", "r", "--", "synpro", "train",
                  env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("state=READY exit=0 -> done")


def test_babysit_gives_up_on_a_failed_job_and_after_max_restarts():
    fake = FakeGcloud(states=["READY"], exits=[1])
    assert sit(fake) == 1
    assert fake.verbs() == ["describe", "exit"]
    fake = FakeGcloud(states=["PREEMPTED", "PREEMPTED", "PREEMPTED"], exits=[])
    assert sit(fake, "--max_restarts", "2") == 1
    assert fake.verbs() == ["describe", "delete", "create", "install", "launch"] * 2 + ["describe"]


def test_readme_commands_parse():
    """Every `python tpu/...` command in tpu/README.md is accepted as written."""
    text = (REPO / "tpu" / "README.md").read_text().replace("\\\n", " ")
    commands = [shlex.split(line) for line in text.splitlines() if line.startswith("python tpu/")]
    assert len(commands) == 10
    for argv in commands:
        name = Path(argv[1]).stem
        assert dry(name, *argv[2:]), argv
