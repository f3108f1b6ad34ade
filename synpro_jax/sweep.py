"""Gin config sweeps: a sweep file of grid and zip axes over gin bindings, one run directory per point.

A sweep file lists ``BINDING = [value, value, ...]`` lines (gin syntax: macros, parameters, references)::

    # crossed with each other (a grid)
    LEARNING_RATE = [3e-4, 6e-4]
    ORGANIC_BUDGET = [100_000, 200_000]

    zip:  # these advance together: one axis of 2 points
    NUM_STEPS = [100, 200]
    WARMUP_STEPS = [10, 20]

Lines before any header, or under ``grid:``, are grid axes; each ``zip:`` header starts a group whose lists have
one length. Points are the product of the axes. Every point is parsed, its configs constructed and its trainer's
own checks run (model against sequence length, batch against the mesh of the devices it will run on; nothing is
allocated or compiled) before the first one runs, so one bad binding fails the whole sweep up front.
``OUT/sweep.json`` lists every point with its status; a rerun skips done points and resumes a preempted one. Each
point runs as its own ``synpro COMMAND`` process (fresh JAX state, the same command a TPU launcher runs on a
slice) in ``OUT/<point>/``, with ``point.gin`` (the experiment's files and the point's bindings, enough to rerun
it alone).

``Sweep.launch`` hands the points to Cloud TPU instead: one slice each, made by the tpu/ scripts' functions
(synpro_jax.cloud_tpu: create, install, launch, one cycle of the babysitter, which can then keep the point running
through preemptions).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
from pathlib import Path
import re
import shlex
import subprocess
import sys
import time

from etils import epath

from synpro_jax import atomic, errors
from synpro_jax.cloud_tpu import babysit, gcloud
from synpro_jax.exit_codes import EXIT_PREEMPTED

# configs (gin and JAX) and the model code are imported where a point is built or checked, inside those
# functions: `synpro sweep --summary` only reads JSON, and a TPU launch runs no model code on this machine.

log = logging.getLogger(__name__)

# The gin macro that names each command's output directory, and the summary file a finished run leaves there.
COMMANDS: dict[str, tuple[str, str, str]] = {  # command -> (entry configurable, directory macro, summary file)
    "train": ("synpro.pretrain", "OUT_DIR", "summary.json"),
    "grpo": ("synpro.grpo", "OUT_DIR", "summary.json"),
    "probe": ("synpro.probe", "OUT_DIR", "summary.json"),
    "synthesize": ("synpro.synthesize", "OUT_DIR", "synthesis.json"),  # written once every shard is done
    "loop": ("synpro.loop", "LOOP_DIR", "loop_summary.json"),
    "demo": ("synpro.demo", "DEMO_DIR", "demo.json"),
}
MANIFEST = "sweep.json"


class SweepError(errors.ConfigError):
    """A sweep file or point that cannot run; the message names the file and line, or the point."""


@dataclasses.dataclass(frozen=True)
class Axis:
    bindings: tuple[str, ...]  # one binding (a grid axis) or several that advance together (a zip group)
    values: tuple[tuple[str, ...], ...]  # per step along the axis: one gin value text per binding


@dataclasses.dataclass(frozen=True)
class Point:
    index: int
    name: str
    bindings: tuple[tuple[str, str], ...]  # (binding, gin value text)

    def gin_lines(self) -> list[str]:
        return [f"{k} = {v}" for k, v in self.bindings]


def split_list(text: str, where: str) -> list[str]:
    """``[a, b, [c, d], 'e,f']`` -> the top-level items' texts."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise SweepError(f"{where}: a sweep axis is a list of values in [...]; got {text!r}")
    items, depth, quote, start = [], 0, "", 1
    for i, ch in enumerate(text[1:-1], 1):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    last = text[start:-1].strip()
    if last:
        items.append(last)
    if quote or depth:
        raise SweepError(f"{where}: unbalanced brackets or quotes in {text!r}")
    if not items or any(not item for item in items):
        raise SweepError(f"{where}: empty value in {text!r}")
    return items


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[:i].strip()
    return line.strip()


def parse_sweep(text: str, source: str = "<sweep>") -> list[Axis]:
    """The axes of a sweep file (see the module docstring)."""
    axes: list[Axis] = []
    zip_group: list[tuple[str, list[str], str]] | None = None
    seen: dict[str, str] = {}

    def close_zip():
        nonlocal zip_group
        if zip_group is not None:
            if not zip_group:
                raise SweepError(f"{source}: an empty zip: group")
            lengths = {len(v) for _, v, _ in zip_group}
            if len(lengths) > 1:
                detail = ", ".join(f"{k} has {len(v)} ({w})" for k, v, w in zip_group)
                raise SweepError(f"{source}: a zip group's lists must have one length: {detail}")
            axes.append(Axis(tuple(k for k, _, _ in zip_group), tuple(zip(*(v for _, v, _ in zip_group)))))
        zip_group = None

    lines = text.splitlines()
    i = 0
    while i < len(lines):
        where = f"{source}:{i + 1}"
        line = _strip_comment(lines[i])
        i += 1
        if not line:
            continue
        if line in ("grid:", "zip:"):
            close_zip()
            zip_group = [] if line == "zip:" else None
            continue
        if "=" not in line:
            raise SweepError(f"{where}: expected 'BINDING = [values]', 'grid:' or 'zip:'; got {line!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        while value.count("[") > value.count("]") and i < len(lines):  # a list over several lines
            value += " " + _strip_comment(lines[i])
            i += 1
        if not re.fullmatch(r"[A-Za-z_][\w./]*", key):
            raise SweepError(f"{where}: {key!r} is not a gin binding or macro name")
        if key in seen:
            raise SweepError(f"{where}: {key} is swept twice (first at {seen[key]})")
        seen[key] = where
        values = split_list(value, where)
        if zip_group is not None:
            zip_group.append((key, values, where))
        else:
            axes.append(Axis((key,), tuple((v,) for v in values)))
    close_zip()
    if not axes:
        raise SweepError(f"{source}: no axes; write lines like LEARNING_RATE = [3e-4, 6e-4]")
    return axes


def _slug(text: str, limit: int = 32) -> str:
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", text.strip("'\"")).strip("_")
    return text[:limit] or "x"


def expand(axes: Sequence[Axis]) -> list[Point]:
    """Every point of the axes' product, each named by its index and values (a valid directory name)."""
    points = []
    width = len(str(math.prod(len(a.values) for a in axes) - 1))
    for index, combo in enumerate(itertools.product(*(a.values for a in axes))):
        bindings = tuple((k, v) for axis, step in zip(axes, combo) for k, v in zip(axis.bindings, step))
        label = "-".join(f"{_slug(k.rsplit('.', 1)[-1], 20)}={_slug(v)}" for k, v in bindings)
        points.append(Point(index, f"{index:0{width}d}-{label}"[:120], bindings))
    return points


def build_job(command: str):
    """The job object ``synpro COMMAND`` would run, built from the parsed gin configuration as the CLI builds it
    (configs.build, loop_job, demo_job), so every config in it is constructed and validated."""
    from synpro_jax import configs

    if command == "loop":
        return configs.loop_job()[0]
    if command == "demo":
        return configs.demo_job()[0]
    return configs.build(COMMANDS[command][0].split(".", 1)[1])


def check_point(
    command: str,
    gin_files: Sequence[str],
    bindings: Sequence[str],
    search_paths: Sequence[str] = (),
    devices: int | None = None,
) -> None:
    """Parse the point's configuration and build its command's job (:func:`build_job`), so a bad binding (unknown
    knob, invalid value, missing REQUIRED) fails here; with ``devices`` (how many the point will run on), also the
    checks its trainer makes before it builds anything (:func:`run_checks`). Leaves gin cleared."""
    import gin

    from synpro_jax import configs

    try:
        configs.parse(gin_files, bindings, gin_search_paths=search_paths)
        job = build_job(command)
        if devices is not None:
            run_checks(command, job, devices)
    finally:
        gin.clear_config()


def _batch_shards(mesh_cfg, devices: int) -> int:
    """How many ways the point's mesh splits the batch on ``devices`` devices (MeshConfig's own error when they
    do not make the mesh), without the devices: an abstract mesh of the same shape."""
    import jax

    from synpro_jax import sharding

    return sharding.batch_shards(jax.sharding.AbstractMesh(mesh_cfg.resolve(devices), sharding.MESH_AXES))


def run_checks(command: str, job, devices: int) -> None:
    """The checks the command's trainer makes before it allocates anything (train.trainer.check_config,
    rl.trainer.check_config), on its built ``job`` (a PretrainJob or GRPOJob) and a mesh of ``devices``."""
    if command == "train" and job.trainer is not None:
        from synpro_jax.train.trainer import check_config  # the model code: not for --summary or a launch

        check_config(job.model, job.trainer, _batch_shards(job.mesh, devices))
    elif command == "grpo" and job.run is not None:
        from synpro_jax.rl.config import GRPOConfig  # the model code: not for --summary or a launch
        from synpro_jax.rl.trainer import check_config

        model = job.model
        if model is None:  # an HF generator: its config.json, when this machine can read it
            try:
                from synpro_jax.models import hf

                model = hf.read_config(job.generator)
            except Exception:  # noqa: BLE001 - made by an earlier stage, or on a bucket: the run checks it
                return
        if job.dtype is not None:
            model = model.replace(dtype=job.dtype)
        check_config(model, job.run, job.algorithm or GRPOConfig(), _batch_shards(job.mesh, devices))


def slice_devices(accelerator_type: str) -> int:
    """The JAX devices of a Cloud TPU slice: v4 and v5p count TensorCores in their names (one megacore device per
    two), the others chips (v2 and v3: one device per core)."""
    kind, count = accelerator_type.rsplit("-", 1)
    return int(count) // 2 if kind in ("v4", "v5p") else int(count)


def local_devices() -> int:
    """How many devices a point run here sees, asked of a fresh process as the points are: JAX started in this
    one would hold a TPU its points need."""
    result = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.device_count())"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SweepError(f"synpro sweep: JAX could not list this machine's devices: {tail}")
    return int(result.stdout.split()[-1])


@dataclasses.dataclass
class Sweep:
    """A sweep over ``gin_files`` for ``command``, its points in ``out_dir``."""

    command: str
    gin_files: tuple[str, ...]
    sweep_file: str
    out_dir: str
    extra: tuple[str, ...] = ()  # bindings every point shares (the command line's --gin.KEY=VALUE)
    search_paths: tuple[str, ...] = ()

    def __post_init__(self):
        if self.command not in COMMANDS:
            raise SweepError(f"synpro sweep --command={self.command!r}: choose one of {sorted(COMMANDS)}")
        from synpro_jax import configs

        if "://" in self.sweep_file:
            path = epath.Path(self.sweep_file)
        else:  # like a gin file: the working directory, --gin_search_paths, then the files synpro_jax ships
            try:
                path = epath.Path(configs.find_gin_file(self.sweep_file, configs.search_paths(self.search_paths)))
            except configs.GinConfigError as e:
                raise SweepError(f"synpro sweep --sweep: {e}".replace("gin file", "sweep file")) from None
        self.axes = parse_sweep(path.read_text(), str(path))
        self.points = expand(self.axes)
        self.root = epath.Path(self.out_dir)
        self.dir_macro = COMMANDS[self.command][1]
        swept = {k for a in self.axes for k in a.bindings}
        if self.dir_macro in swept:
            raise SweepError(f"{self.sweep_file}: {self.dir_macro} is set by the sweep for each point; do not sweep it")

    def point_dir(self, point: Point) -> epath.Path:
        return self.root / point.name

    def bindings(self, point: Point) -> list[str]:
        return list(self.extra) + point.gin_lines() + [f"{self.dir_macro} = {json.dumps(str(self.point_dir(point)))}"]

    def argv(
        self, point: Point, gin_files: Sequence[str] | None = None, search_paths: Sequence[str] | None = None
    ) -> list[str]:
        """The point's command line (what runs locally, or on a TPU slice, with the files as its workers see them)."""
        argv = ["synpro", self.command]
        argv += [f"--gin_file={f}" for f in (self.gin_files if gin_files is None else gin_files)]
        argv += [f"--gin_search_paths={p}" for p in (self.search_paths if search_paths is None else search_paths)]
        argv += [f"--gin.{b.replace(' = ', '=', 1)}" for b in self.bindings(point)]
        return argv

    # --- the manifest -------------------------------------------------------------------------------------
    def definition(self) -> dict:
        return {
            "command": self.command,
            "gin_files": list(self.gin_files),
            "extra": list(self.extra),
            "axes": [{"bindings": list(a.bindings), "values": [list(v) for v in a.values]} for a in self.axes],
        }

    def load_manifest(self) -> dict:
        path = self.root / MANIFEST
        fresh = {
            **self.definition(),
            "points": [{"name": p.name, "bindings": dict(p.bindings), "status": "pending"} for p in self.points],
        }
        if not path.exists():
            return fresh
        old = json.loads(path.read_text())
        mine = self.definition()
        changed = [k for k in mine if old.get(k) != mine[k]]
        if changed:
            raise SweepError(
                f"{path} holds another sweep (its {', '.join(changed)} differ); rerun it as it was, "
                f"or give this sweep another --out"
            )
        return old

    def save_manifest(self, manifest: dict) -> None:
        # One process writes it: the sweep never starts JAX's backend (it would hold a TPU its points need).
        atomic.write_json(self.root / MANIFEST, manifest)

    # --- running ------------------------------------------------------------------------------------------
    def check(self, devices: int | None = None) -> None:
        """Every point's configuration, before any runs (one bad binding fails the sweep); with ``devices`` (how
        many each point runs on), its trainer's checks too."""
        for point in self.points:
            try:
                check_point(self.command, self.gin_files, self.bindings(point), self.search_paths, devices)
            except Exception as e:
                # The configuration's errors and the trainers' checks' (ValueErrors naming the knob) are the
                # point's, reported with its name; anything else is a bug.
                if not (isinstance(e, ValueError) or errors.is_user_error(e)):
                    raise
                where = f"sweep point {point.name} ({', '.join(point.gin_lines())})"
                raise SweepError(f"{where}: {errors.one_line(e)}") from e

    def launch(self, tpu: TpuLauncher, dry_run: bool = False, stream=None, runner=None) -> dict:
        """Launch each point not done (nor already launched) on its own TPU slice: the tpu/ scripts' create,
        install and launch commands, run in order with ``runner`` (gcloud.run), stopping at a failure; printed
        instead with ``dry_run``. Flags, ``--out`` and every point's bindings are checked first. Returns the
        manifest, where each launched point records its slice and the babysit.py line that keeps it running."""
        return _launch(self, tpu, dry_run, stream, runner)

    def run(self, dry_run: bool = False, stream=None) -> dict:
        """Run the points one after another (done ones skipped). Returns the manifest."""
        stream = stream or sys.stdout
        manifest = self.load_manifest()
        self.check(local_devices())
        if dry_run:
            for point in self.points:
                print(shlex.join(self.argv(point)), file=stream)
            return manifest
        self.root.mkdir(parents=True, exist_ok=True)
        self.save_manifest(manifest)
        entries = {e["name"]: e for e in manifest["points"]}
        t0 = time.perf_counter()
        for n, point in enumerate(self.points, 1):
            entry = entries[point.name]
            if self._skip(point, entry, f"[sweep {n}/{len(self.points)}]", stream):
                continue
            state = "resuming" if entry["status"] != "pending" else "starting"
            elapsed = time.perf_counter() - t0
            print(f"[sweep {n}/{len(self.points)} | {elapsed:,.0f}s] {point.name}: {state}", file=stream, flush=True)
            directory = self.point_dir(point)
            directory.mkdir(parents=True, exist_ok=True)
            atomic.write_text(directory / "point.gin", self.point_gin(point))
            start = time.perf_counter()
            code = subprocess.call([sys.executable, "-m", "synpro_jax.cli", *self.argv(point)[1:]])
            entry.update(
                launcher="local",
                exit_code=code,
                seconds=round(time.perf_counter() - start, 1),
                status="done" if code == 0 else "preempted" if code == EXIT_PREEMPTED else "failed",
            )
            self.save_manifest(manifest)
            print(
                f"[sweep {n}/{len(self.points)}] {point.name}: {entry['status']} in {entry['seconds']:,.1f}s"
                + ("" if code == 0 else f" (exit {code})"),
                file=stream,
                flush=True,
            )
            if code == EXIT_PREEMPTED:  # the machine is going away: stop here, rerun to resume
                break
        self.save_manifest(manifest)  # launched points found finished by _skip
        return manifest

    def finished(self, point: Point) -> bool:
        """Whether the point's directory holds the summary of a finished run: how a point launched on a TPU slice
        becomes done (its summary is written there; a preempted run's says so)."""
        path = self.point_dir(point) / COMMANDS[self.command][2]
        try:
            summary = json.loads(path.read_text()) if path.exists() else None
        except ValueError:
            return False
        return isinstance(summary, dict) and not summary.get("preempted") and summary.get("complete") is not False

    def _skip(self, point: Point, entry: dict, tag: str, stream) -> bool:
        """Done points, and points running on a TPU slice (a second copy would share their directory)."""
        if entry["status"] == "launched" and self.finished(point):
            entry["status"] = "done"
        if entry["status"] == "done":
            print(f"{tag} {point.name}: done, skipping", file=stream, flush=True)
            return True
        if entry["status"] == "launched":
            print(
                f"{tag} {point.name}: launched on slice {entry.get('slice')}, not done yet; skipping (babysit it: "
                f"{entry.get('babysit')})",
                file=stream,
                flush=True,
            )
            return True
        return False

    def point_gin(self, point: Point) -> str:
        lines = [
            f"# sweep point {point.name} of {self.root / MANIFEST}",
            f"#   synpro {self.command} --gin_file={self.point_dir(point) / 'point.gin'}",
        ]
        lines += [f"include {json.dumps(f)}" for f in self.gin_files]
        lines += self.bindings(point)
        return "\n".join(lines) + "\n"


# --- launching on Cloud TPU ------------------------------------------------------------------------------------
BABYSIT = ("python", "-m", "synpro_jax.cloud_tpu.babysit")  # tpu/babysit.py's command line, wherever synpro_jax is


class _FlagError:
    """gcloud.check's parser: its one-line errors (naming the flag) raised as a SweepError."""

    def error(self, message: str):
        raise SweepError(f"synpro sweep --launcher=tpu: {message}")


@dataclasses.dataclass(frozen=True)
class TpuLauncher:
    """A slice per point: ``synpro sweep --launcher=tpu``'s flags, named as the tpu/ scripts name them."""

    tpu_prefix: str | None = None  # each slice is PREFIX-<point name>, made a valid TPU name
    zone: str | None = None
    accelerator_type: str | None = None
    project: str | None = None
    version: str | None = None
    provisioning: str | None = None  # None (on demand), "spot", "preemptible" or "reserved"
    repo: str | None = None
    ref: str | None = None
    scp_from: str | None = None

    def slice_name(self, point: Point) -> str:
        # The point's name leads with its index, so names stay distinct when cut to 63 characters.
        slug = re.sub(r"[^a-z0-9]+", "-", point.name.lower()).strip("-")
        return f"{self.tpu_prefix}-{slug}"[:63].rstrip("-")

    def args(self, point: Point) -> argparse.Namespace:
        """The point's slice as the tpu/ scripts' parsed flags (what gcloud.check and babysit.Babysitter take)."""
        name = self.slice_name(point)
        return argparse.Namespace(
            name=name,
            zone=self.zone,
            project=self.project,
            accelerator_type=self.accelerator_type,
            version=self.version,
            **{kind: self.provisioning == kind for kind in ("spot", "preemptible", "reserved")},
            repo=self.repo,
            ref=self.ref,
            scp_from=self.scp_from,
            run_name=name,
        )

    def check(self, points: Sequence[Point]) -> None:
        """Bad flags fail here, naming the flag, before any point is checked or command printed."""
        for flag, value, example in (
            ("--tpu_prefix", self.tpu_prefix, "e.g. lr-sweep"),
            ("--zone", self.zone, "e.g. us-west4-a for v5e, us-central2-b for v4"),
            ("--accelerator_type", self.accelerator_type, "e.g. v5litepod-8 or v4-32"),
        ):
            if not value:
                raise SweepError(f"synpro sweep --launcher=tpu needs {flag} ({example})")
        width = len(str(len(points) - 1))
        if not gcloud.NAME_RE.match(self.tpu_prefix) or len(self.tpu_prefix) > 62 - width:
            raise SweepError(
                f"synpro sweep --tpu_prefix: {self.tpu_prefix!r} must be lowercase letters, digits and "
                f"hyphens, start with a letter, not end with a hyphen, and be at most {62 - width} "
                f"characters (slices are PREFIX-<point>, at most 63)"
            )
        if self.provisioning not in (None, "spot", "preemptible", "reserved"):
            raise SweepError(f"synpro sweep: unknown provisioning {self.provisioning!r}")
        names = [self.slice_name(p) for p in points]
        if len(set(names)) != len(names):  # not expected: the names lead with distinct indices
            raise SweepError(f"synpro sweep --tpu_prefix={self.tpu_prefix}: slice names collide: {names}")
        for point in points:
            gcloud.check(_FlagError(), self.args(point))


def workers_root(tpu: TpuLauncher) -> tuple[Path, str]:
    """This machine's copy of the directory the workers run in, their ~/synpro_jax (tpu/install.py), and what it
    is: --scp_from's, which is copied to them as it is; with --repo, the working directory, taken to be a checkout
    of it."""
    if tpu.scp_from is not None:
        return Path(tpu.scp_from).resolve(), "--scp_from, copied to the workers as it is"
    return Path.cwd().resolve(), "the working directory, taken to be a checkout of --repo"


def for_workers(path: str | os.PathLike, flag: str, root: tuple[Path, str]) -> str:
    """``path`` as the workers name it: a gin file synpro_jax ships as ``gin/...`` (the workers have those in their
    checkout and among their package's files), anything else relative to the ``root`` of :func:`workers_root`."""
    from synpro_jax import configs

    path, (directory, what) = Path(path).resolve(), root
    shipped = Path(str(configs.gin_search_root())).resolve()
    if path.is_relative_to(shipped / "gin"):
        return str(path.relative_to(shipped))
    if path.is_relative_to(directory):
        return str(path.relative_to(directory))
    raise SweepError(
        f"synpro sweep {flag}: {path} is outside {directory} ({what}) and is not a gin file synpro_jax ships, so "
        "the TPU workers will not have it; move it under there"
    )


def _launch(sweep: Sweep, tpu: TpuLauncher, dry_run: bool = False, stream=None, runner=None) -> dict:
    stream = stream or sys.stdout
    runner = runner or gcloud.run
    tpu.check(sweep.points)
    if not atomic.is_remote(sweep.root):
        raise SweepError(
            f"synpro sweep --launcher=tpu --out={sweep.out_dir}: the out directory must be one that every "
            "worker and this machine share, such as gs://BUCKET/sweeps/NAME (the points' runs go there, "
            "and sweep.json here sees them finish)"
        )
    try:
        manifest = sweep.load_manifest()
    except SweepError:
        raise
    except Exception as e:  # noqa: BLE001 - a dry run may plan without the bucket's credentials
        if not dry_run:
            raise
        manifest = {"points": [{"name": p.name, "status": "pending"} for p in sweep.points]}
        print(
            f"# could not read {sweep.root / MANIFEST} ({' '.join(str(e).split())[:200]}); showing every point",
            file=stream,
        )
    sweep.check(slice_devices(tpu.accelerator_type))
    from synpro_jax import configs

    root, paths = workers_root(tpu), configs.search_paths(sweep.search_paths)
    search = tuple(for_workers(p, "--gin_search_paths", root) for p in paths[:-1])  # the last: the shipped files
    files = tuple(for_workers(configs.find_gin_file(f, paths), "--gin_file", root) for f in sweep.gin_files)
    entries = {e["name"]: e for e in manifest["points"]}
    if not dry_run:
        sweep.root.mkdir(parents=True, exist_ok=True)
        sweep.save_manifest(manifest)
    launched = []
    for n, point in enumerate(sweep.points, 1):
        entry, tag = entries[point.name], f"[sweep {n}/{len(sweep.points)}]"
        if sweep._skip(point, entry, ("# " if dry_run else "") + tag, stream):
            continue
        args = tpu.args(point)
        argv = sweep.argv(point, files, search)
        # One babysit.py cycle (create, install, launch): the babysitter, started later, relaunches the same.
        sitter = babysit.Babysitter(args, argv, runner)
        babysit_line = shlex.join([*BABYSIT, *gcloud.script_flags(args), "--", *argv])
        # A slice whose create succeeded before (its install or launch failed) is kept: create would fail now.
        create = [] if entry.get("created") and entry.get("slice") == args.name else sitter.create_commands()
        rest = sitter.install_commands() + sitter.launch_commands()
        if dry_run:
            print(f"# {tag} {point.name} on slice {args.name}", file=stream)
            with contextlib.redirect_stdout(stream):
                gcloud.run_all(create + rest, dry_run=True)
            print(f"#   babysit: {babysit_line}", file=stream)
            continue
        print(f"{tag} {point.name}: launching on slice {args.name}", file=stream, flush=True)
        directory = sweep.point_dir(point)
        directory.mkdir(parents=True, exist_ok=True)
        atomic.write_text(directory / "point.gin", sweep.point_gin(point))
        entry.update(
            launcher="tpu",
            slice=args.name,
            zone=tpu.zone,
            project=tpu.project,
            accelerator_type=tpu.accelerator_type,
            babysit=babysit_line,
        )
        code = gcloud.run_all(create, dry_run=False, runner=runner)
        if code == 0:
            entry["created"] = True
            code = gcloud.run_all(rest, dry_run=False, runner=runner)
        entry.update(status="launched" if code == 0 else "launch_failed", exit_code=code)
        sweep.save_manifest(manifest)
        if code:
            step = "create" if not entry.get("created") else "install or launch"
            print(
                f"{tag} {point.name}: {step} failed (exit {code}); stopping here. Rerun to retry"
                + (f" (slice {args.name} is kept; the rerun does not create it again)" if entry.get("created") else ""),
                file=stream,
                flush=True,
            )
            break
        launched.append(babysit_line)
        print(
            f"{tag} {point.name}: launched; its log is ~/{gcloud.LOG_DIR}/{args.name}.log on every worker",
            file=stream,
            flush=True,
        )
    if not dry_run:
        sweep.save_manifest(manifest)  # launched points found finished by _skip
    if launched:
        print(
            "# Spot or preemptible slices: keep each point running through preemptions with its babysitter "
            "(one per slice, e.g. in tmux):",
            file=stream,
        )
        for line in launched:
            print(line, file=stream)
    return manifest


# --- the summary --------------------------------------------------------------------------------------------
def _final_val_loss(summary: dict) -> float | None:
    for key in ("final_val_loss", "val_loss", "best_val_loss"):
        if isinstance(summary.get(key), (int, float)):
            return float(summary[key])
    runs = summary.get("runs")  # a loop: the SynPro run's last round
    if isinstance(runs, dict):
        for rounds in runs.values():
            losses = [r.get("val_loss") for r in rounds if r.get("val_loss") is not None]
            if losses:
                return float(losses[-1])
    return None


def summarize(out_dir: str, stream=None) -> list[dict]:
    """One row per point (its swept values, status, final validation loss) from ``OUT/sweep.json`` and each
    point's summary; writes ``summary.csv`` and ``summary.png`` (the swept knob against final validation loss)."""
    stream = stream or sys.stdout
    root = epath.Path(out_dir)
    path = root / MANIFEST
    if not path.exists():
        raise SweepError(f"synpro sweep --summary --out={out_dir}: no {MANIFEST} there")
    manifest = json.loads(path.read_text())
    summary_file = COMMANDS[manifest["command"]][2]
    keys = [k for a in manifest["axes"] for k in a["bindings"]]
    rows = []
    for entry in manifest["points"]:
        row = {"point": entry["name"], **entry["bindings"], "status": entry["status"], "final_val_loss": None}
        summary = root / entry["name"] / summary_file
        if summary.exists():
            try:
                row["final_val_loss"] = _final_val_loss(json.loads(summary.read_text()))
            except ValueError:
                row["status"] += " (unreadable summary)"
        rows.append(row)
    columns = ["point", *keys, "status", "final_val_loss"]
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(root / "summary.csv", buf.getvalue())
    widths = {c: max(len(c), *(len(_cell(r[c])) for r in rows)) for c in columns[1:]}
    print("  ".join(c.ljust(widths[c]) for c in columns[1:]), file=stream)
    for r in rows:
        print("  ".join(_cell(r[c]).ljust(widths[c]) for c in columns[1:]), file=stream)
    _plot(root / "summary.png", manifest, rows, keys)
    print(f"wrote {root / 'summary.csv'} and {root / 'summary.png'}", file=stream)
    return rows


def _cell(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _plot(path: epath.Path, manifest: dict, rows: list[dict], keys: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = manifest["axes"][0]
    knob = axis["bindings"][0]
    others = [k for k in keys if k not in axis["bindings"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in others), []).append(r)
    for group, members in groups.items():
        xs = [m[knob] for m in members if m["final_val_loss"] is not None]
        ys = [m["final_val_loss"] for m in members if m["final_val_loss"] is not None]
        try:
            xs = [float(x) for x in xs]
        except ValueError:
            pass  # categorical values: matplotlib places strings in order
        label = ", ".join(f"{k}={v}" for k, v in zip(others, group)) or None
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(knob)
    ax.set_ylabel("final validation loss")
    if others:
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic.write_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
    plt.close(fig)
