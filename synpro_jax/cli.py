"""`synpro <command>`: the command line of synpro_jax.

    synpro presets                                    # model sizes and parameter counts
    synpro train                                      # the default job (gin/experiments/markov_tiny.gin)
    synpro train --gin_file=gin/experiments/cpu_organic.gin --gin.NUM_STEPS=200
    synpro vocab train --corpus 'data/*.jsonl' --vocab_size 8192 --out runs/vocab/sp8k.model
    synpro probe --gin_file=gin/experiments/cpu_organic_probe.gin
    synpro influence-server --gin_file=gin/experiments/cpu_organic_probe.gin
    synpro synthesize --gin_file=gin/experiments/cpu_organic_rephrase.gin
    synpro loop --gin_file=gin/experiments/cpu_loop.gin
    synpro sweep --gin_file=gin/experiments/markov_tiny.gin --sweep=gin/sweeps/markov_lr_steps.sweep
    synpro sweep --summary --out=runs/sweep/markov_lr_steps
    synpro eval --checkpoint runs/grpo/export --tasks arc_easy,sciq --data_root ../shared/data/eval
    synpro --version

The gin files ship with the package, so these work from any directory; ``--gin_search_paths=DIR1,DIR2`` (as in
t5x) adds folders to look in after the working directory.

A user's mistake (a bad flag or gin binding, a config value that cannot work, a missing input: synpro_jax/errors.py)
is one line, ``error: ...``, and exit status 2; anything else that escapes a command is a bug, printed with its
traceback (exit status 1). The other statuses are synpro_jax/exit_codes.py's.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys

from etils.epath import Path

from synpro_jax import errors
from synpro_jax.exit_codes import EXIT_PREEMPTED, EXIT_STALLED

# Each command imports what it runs inside its own function: `synpro --version`, `synpro presets` and a config error
# must not wait for JAX, TensorFlow or seqio, and JAX may only start once _quiet_startup and
# keep_jax_off_absent_tpu have set its environment.

DEFAULT_EXPERIMENT = "gin/experiments/markov_tiny.gin"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("synpro_jax")
    except PackageNotFoundError:  # run from a checkout that was never installed
        from synpro_jax import __version__

        return __version__


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow (the input pipeline's, never the model's) without its start-up chatter.

    TensorFlow's C++ code writes oneDNN and CUDA-probe lines to stderr before any log level applies, and, on a
    machine without a GPU, a failed cuInit as an ERROR when its devices are first listed. Both happen here with
    stderr captured (and replayed if something fails); TF_CPP_MIN_LOG_LEVEL=3, unless the user chose a level,
    covers the rest. TensorFlow sees no GPU, so it never takes the accelerators JAX trains on (as in t5x).
    """
    if "tensorflow" in sys.modules:
        return
    from synpro_jax import native_stderr

    with native_stderr.held():
        import tensorflow as tf

        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # devices already initialized by an earlier import: leave them
            pass


def tpu_present() -> bool:
    """Whether this machine has TPU chips (:mod:`synpro_jax.tpu_chips`), or its environment describes a TPU slice
    (the variables GKE and multi-host launchers set)."""
    from synpro_jax import tpu_chips

    if tpu_chips.present():
        return True
    return any(
        os.environ.get(v)
        for v in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "JAX_FORCE_TPU_INIT")
    )


def keep_jax_off_absent_tpu() -> bool:
    """With libtpu installed on a machine without TPUs, JAX tries the TPU backend first and libtpu logs an
    INVALID_ARGUMENT line about TPU_WORKER_HOSTNAMES (and its metadata search) on every command. Run JAX on CPU
    there: JAX_PLATFORMS=cpu, set before JAX starts its backend and inherited by the processes synpro starts.
    A JAX_PLATFORMS the user set, or a GPU beside libtpu, is left alone. ``synpro compile`` still reaches
    libtpu's topologies: describing one needs no TPU backend. Returns whether it set JAX_PLATFORMS."""
    import importlib.util

    if "JAX_PLATFORMS" in os.environ or tpu_present():
        return False
    if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
        return False
    if glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg") or os.path.exists("/dev/kfd"):
        return False
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported already (by an embedding program): its config read the variable then
        import jax

        try:
            jax.config.update("jax_platforms", "cpu")
        except RuntimeError:  # its backend is up: too late to choose
            pass
    return True


def _quiet_startup(needs_tensorflow: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("synpro_jax").setLevel(logging.INFO)  # resumes, skipped input, data summaries
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and seqio log each step's bookkeeping at INFO
    if needs_tensorflow:
        _import_tensorflow_quietly()


def cmd_presets(args) -> int:
    from synpro_jax.models import describe_presets

    print(describe_presets())
    return 0


def _gin_bindings(extra: list[str]) -> list[str] | None:
    bindings = []
    for item in extra:  # --gin.KEY=VALUE, as t5x spells them
        if not item.startswith("--gin."):
            print(f"error: unknown argument {item!r}; use --gin_file=FILE or --gin.KEY=VALUE", file=sys.stderr)
            return None
        bindings.append(item[len("--gin.") :])
    return bindings


def _search_paths(args) -> list[str]:
    return [p for item in args.gin_search_paths for p in item.split(",") if p]


def _parse_gin(files: list[str], extra: list[str], search_paths: list[str]) -> bool:
    from synpro_jax import configs

    bindings = _gin_bindings(extra)
    if bindings is None:
        return False
    try:
        configs.parse(files, bindings, gin_search_paths=search_paths)
    except Exception as e:  # unknown knobs, unset macros, files that cannot be read or parsed fail here, before work
        if not errors.is_user_error(e):
            raise
        print(f"error: gin configuration: {errors.one_line(e)}", file=sys.stderr)
        return False
    return True


def _gin_stage(args, extra: list[str], command: str, example: str) -> bool:
    if not args.gin_file:
        print(f"error: synpro {command} needs --gin_file (e.g. {example})", file=sys.stderr)
        return False
    return _parse_gin(args.gin_file, extra, _search_paths(args))


def cmd_probe(args, extra: list[str]) -> int:
    if not _gin_stage(args, extra, "probe", "gin/experiments/cpu_organic_probe.gin"):
        return 2
    from synpro_jax import configs
    from synpro_jax.influence import run

    print(json.dumps(run.probe(configs.build("probe"), configs.record()), indent=2))
    return 0


def cmd_influence_server(args, extra: list[str]) -> int:
    if not _gin_stage(args, extra, "influence-server", "gin/experiments/cpu_organic_probe.gin"):
        return 2
    from synpro_jax import configs
    from synpro_jax.influence import run

    run.serve(configs.build("influence_server"))
    return 0


def cmd_synthesize(args, extra: list[str]) -> int:
    if not _gin_stage(args, extra, "synthesize", "gin/experiments/olmo2_rephrase_dclm.gin"):
        return 2
    from synpro_jax import configs
    from synpro_jax.generation import run

    manifest = run.synthesize(configs.build("synthesize"), configs.record())
    shards = {k: v for k, v in manifest.items() if k != "shards"}
    print(json.dumps(shards, indent=2))
    print(f"add to synpro.DataConfig.synthetic: {manifest['data_config_synthetic']}")
    return 0


def cmd_grpo(args, extra: list[str]) -> int:
    if not _gin_stage(args, extra, "grpo", "gin/experiments/cpu_grpo_rephrase.gin"):
        return 2
    from synpro_jax import configs
    from synpro_jax.rl import run
    from synpro_jax.rl.trainer import GRPOStalled

    try:
        summary = run.grpo(configs.build("grpo"), configs.record())
    except GRPOStalled as e:  # a run outcome, not a bug: its message names the cause
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STALLED
    print(json.dumps(summary, indent=2))
    return EXIT_PREEMPTED if summary.get("preempted") else 0


def cmd_loop(args, extra: list[str]) -> int:
    if not _gin_stage(args, extra, "loop", "gin/experiments/cpu_loop.gin"):
        return 2
    from synpro_jax import configs
    from synpro_jax.loop.runner import run_loop

    job, settings = configs.loop_job()
    summary = run_loop(job.config, settings, progress=job.progress, record=configs.record())
    runs = summary["runs"]
    for run, rounds in runs.items():
        losses = ", ".join(f"r{r['round']} {r['val_loss']:.4f}" for r in rounds if r.get("val_loss") is not None)
        print(f"{run}: validation loss {losses or '(none yet)'}")
    effective = summary["effective_tokens"]
    if effective.get("fit"):
        fit = effective["fit"]
        print(
            f"oracle ladder ({len(effective['ladder'])} points, {effective['dof']} degree(s) of freedom): "
            f"{fit['status']}, E {fit['E']:.3f}, beta {fit['beta']:.3f}"
        )
    for run, note in effective.get("short_oracles", {}).items():
        print(f"{run}: {note}")
    for run, entry in effective.get("arms", {}).items():
        for ref, m in entry["multiplier"].items():
            if run != ref:
                print(
                    f"{run}: {m['value']:.2f}x the effective tokens of {ref} [{m['low']:.2f}, {m['high']:.2f}]"
                    f"{'' if m['status'] == 'ok' else ' (' + m['status'] + ')'}"
                )

    def num(x, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    for d in summary.get("diversity", []):
        syn, org = d["synthetic"], d["organic"]
        print(
            f"r{d['round']} {d['generator']}: distinct-2 {num(syn['distinct'].get('2'), '.2f')} "
            f"(organic {num(org['distinct'].get('2'), '.2f')}), compression {num(syn['compression_ratio'], '.2f')} "
            f"(organic {num(org['compression_ratio'], '.2f')}), near-duplicates "
            f"{num(syn['near_duplicate_share'], '.1%')} (organic {num(org['near_duplicate_share'], '.1%')})"
        )
    print(f"wrote {Path(summary['out_dir']) / 'loop_summary.json'}")
    return EXIT_PREEMPTED if summary["preempted"] else 0


def cmd_demo(args, extra: list[str]) -> int:
    if args.quick and args.corpus:
        print("error: synpro demo: --quick runs the built-in world; drop it with --corpus", file=sys.stderr)
        return 2
    default = "demo_corpus" if args.corpus else "demo_quick" if args.quick else "demo"
    files = args.gin_file or [f"gin/experiments/{default}.gin"]
    macros = [f"--gin.DEMO_DIR={json.dumps(args.out)}", f"--gin.SEED={args.seed}"]
    if args.full:
        macros.append("--gin.synpro.DemoConfig.ablations=True")
    for knob, value in (("corpus", args.corpus), ("reference", args.reference), ("generator", args.generator)):
        if value:
            macros.append(f"--gin.synpro.DemoConfig.{knob}={json.dumps(value)}")
    if not _parse_gin(files, macros + extra, _search_paths(args)):
        return 2
    from synpro_jax import configs
    from synpro_jax.demo.runner import run_demo

    job, experiment = configs.demo_job()
    report = run_demo(job, experiment, record=configs.record())
    return EXIT_PREEMPTED if report.get("preempted") else 0


def cmd_train(args, extra: list[str]) -> int:
    if not _parse_gin(args.gin_file or [DEFAULT_EXPERIMENT], extra, _search_paths(args)):
        return 2
    from synpro_jax import configs
    from synpro_jax.train import run

    summary = run.pretrain(configs.build("pretrain"), configs.record())
    print(json.dumps(summary, indent=2))
    return EXIT_PREEMPTED if summary.get("preempted") else 0


def cmd_sweep(args, extra: list[str]) -> int:
    from synpro_jax import sweep

    if args.summary:
        if not args.out:
            print("error: synpro sweep --summary needs --out (the sweep's directory)", file=sys.stderr)
            return 2
        sweep.summarize(args.out)
        return 0
    if not args.gin_file or not args.sweep:
        print(
            "error: synpro sweep needs --gin_file=EXPERIMENT and --sweep=SWEEP_FILE "
            "(e.g. --gin_file=gin/experiments/markov_tiny.gin --sweep=gin/sweeps/markov_lr.sweep)",
            file=sys.stderr,
        )
        return 2
    tpu_flags = {
        k: getattr(args, k)
        for k in ("tpu_prefix", "zone", "accelerator_type", "project", "version", "repo", "ref", "scp_from")
        if getattr(args, k) is not None
    }
    provisioning = next((k for k in ("spot", "preemptible", "reserved") if getattr(args, k)), None)
    if args.launcher != "tpu" and (tpu_flags or provisioning):
        print(
            f"error: synpro sweep --{next(iter(tpu_flags), provisioning)}: applies to --launcher=tpu", file=sys.stderr
        )
        return 2
    bindings = _gin_bindings(extra)
    if bindings is None:
        return 2
    out = args.out or str(Path("runs") / "sweep" / Path(args.sweep).stem)
    job = sweep.Sweep(args.command, tuple(args.gin_file), args.sweep, out, tuple(bindings), tuple(_search_paths(args)))
    if args.launcher == "tpu":
        manifest = job.launch(sweep.TpuLauncher(**tpu_flags, provisioning=provisioning), dry_run=args.dry_run)
        failed = [p["name"] for p in manifest["points"] if p["status"] == "launch_failed"]
        if failed and not args.dry_run:  # a dry run launched nothing: an earlier failure is retried in its plan
            print(
                f"error: launching sweep point {failed[0]} failed (the gcloud command is above); rerun to retry",
                file=sys.stderr,
            )
            return 1
        return 0
    manifest = job.run(dry_run=args.dry_run)
    if args.dry_run:
        return 0
    statuses = [p["status"] for p in manifest["points"]]
    if "preempted" in statuses:
        return EXIT_PREEMPTED
    failed = [p["name"] for p in manifest["points"] if p["status"] == "failed"]
    if failed:
        print(
            f"error: {len(failed)} sweep point(s) failed: {', '.join(failed)} (their logs are above; rerun to "
            "retry them)",
            file=sys.stderr,
        )
        return 1
    print(f"sweep done: {len(statuses)} points in {out}; synpro sweep --summary --out={out}")
    return 0


COMPILE_REEXEC = "SYNPRO_COMPILE_STAND_IN"  # set in the process compile starts for more XLA:CPU devices


def _compile_in_fresh_process(args, n: int) -> int:
    """This ``synpro compile`` again, in a process whose JAX starts with ``n`` CPU devices (this one's backend
    is up with fewer). Its output is this command's."""
    import subprocess

    if os.environ.get(COMPILE_REEXEC):  # the fresh process has too few too: stop rather than loop
        print(
            f"error: synpro compile: XLA:CPU's estimate needs {n} CPU devices and JAX would not start with them "
            f"(JAX_NUM_CPU_DEVICES={n})",
            file=sys.stderr,
        )
        return 1
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(n), JAX_PLATFORMS="cpu", **{COMPILE_REEXEC: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    return subprocess.call([sys.executable, "-m", "synpro_jax.cli", *args.argv], env=env)


def cmd_compile(args, extra: list[str]) -> int:
    from synpro_jax import compile as aot

    hbm = None if args.hbm_gib is None else int(args.hbm_gib * 2**30)
    if args.topology == "cpu" and hbm is None:  # the local devices have no HBM size to check against
        print(
            "error: synpro compile --topology=cpu needs --hbm_gib (a budget per device) for a verdict; or name a "
            "TPU topology, e.g. --topology=v5e-8",
            file=sys.stderr,
        )
        return 2
    if args.topology != "cpu":
        try:
            aot.topology_devices(args.topology)
        except ValueError as e:  # an unknown topology
            print(f"error: {errors.one_line(e)}", file=sys.stderr)
            return 2
        except RuntimeError:  # libtpu cannot describe it: CPU devices stand in for its chips, one each
            n = aot.chip_count(args.topology)
            if not aot.use_cpu_devices(n):
                return _compile_in_fresh_process(args, n)
    if not args.gin_file:
        print("error: synpro compile needs --gin_file (e.g. gin/experiments/olmo_400m_dclm.gin)", file=sys.stderr)
        return 2
    bindings = _gin_bindings(extra)
    if bindings is None:
        return 2
    try:  # compile reads no data: the REQUIRED macros left unset (paths, run directories) get placeholders
        unset = aot.unset_macros(args.gin_file, bindings, _search_paths(args))
    except Exception as e:
        if not errors.is_user_error(e):
            raise
        unset = []  # a file that cannot be read or parsed: _parse_gin says so below
    if unset:
        print(f"compile reads no data: the unset REQUIRED macros {', '.join(unset)} are placeholders")
    placeholders = [f"--gin.{b}" for b in aot.placeholder_bindings(unset)]
    if not _parse_gin(args.gin_file, extra + placeholders, _search_paths(args)):
        return 2
    try:
        programs = None if args.programs == "auto" else tuple(x for x in args.programs.split(",") if x)
        reports = aot.compile_experiment(args.topology, hbm, programs)
    except ValueError as e:  # shapes the programs cannot take (say, a batch that does not divide over the mesh)
        print(f"error: {errors.one_line(e)}", file=sys.stderr)
        return 2
    for r in reports:
        print(r.line())
    if args.json:
        from synpro_jax import atomic

        atomic.write_text(args.json, aot.to_json(reports))
        print(f"wrote {args.json}")
    where = f"--hbm_gib={args.hbm_gib:g}" if args.hbm_gib is not None else args.topology
    for r in (r for r in reports if r.fits is False):
        print(
            f"error: {r.kind} needs {r.total_bytes / 2**30:,.2f} GiB per device but {where} has "
            f"{r.hbm_bytes / 2**30:,.2f} GiB: {aot.hint(r)}",
            file=sys.stderr,
        )
    return 1 if any(r.fits is False for r in reports) else 0


def cmd_vocab_train(args) -> int:
    from synpro_jax.data.sources import open_source
    from synpro_jax.data.vocab import train_sentencepiece

    srcs = [open_source(c, text_field=args.text_field) for c in args.corpus]

    def texts():
        for src in srcs:
            for doc in src:
                if doc.text:
                    yield doc.text
            print(f"{src.files if hasattr(src, 'files') else src}: {src.report.summary()}", file=sys.stderr)

    out = train_sentencepiece(texts(), args.out, args.vocab_size, model_type=args.model_type, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def cmd_eval(args) -> int:
    from synpro_jax.eval import run

    settings = run.EvalConfig(
        tasks=[t for item in args.tasks for t in item.split(",") if t],
        ppl=args.ppl,
        data_root=args.data_root,
        limit=args.limit,
        ppl_limit=args.ppl_limit,
        text_field=args.text_field,
        rows=args.rows,
        max_len=args.max_len,
    )
    results = run.evaluate(
        args.checkpoint,
        settings,
        preset=args.preset,
        vocab=args.vocab,
        dtype=args.dtype,
        all_devices=args.all_devices,
        progress=not args.no_progress,
    )
    print(run.format_table(results))
    out = run.write_json(results, args.out or Path(args.checkpoint) / "eval.json")
    print(f"wrote {out}")
    return 0


def cmd_serve(args) -> int:
    from synpro_jax.serve import server

    server.serve(
        args.model,
        host=args.host,
        port=args.port,
        vocab=args.vocab,
        preset=args.preset,
        dtype=args.dtype,
        all_devices=args.all_devices,
        faults=args.faults,
        model_name=args.served_model_name,
        max_rows=args.max_rows,
        batch_wait_s=args.batch_wait_ms / 1000,
        allow_fault_injection=args.allow_fault_injection,
        max_body_bytes=args.max_body_bytes,
        body_timeout_s=args.body_timeout_s,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synpro", description="SynPro in JAX/Flax.")
    parser.add_argument("--version", action="version", version=f"synpro_jax {version()}")
    multi = parser.add_argument_group("several processes (on a Cloud TPU VM slice these are found automatically)")
    multi.add_argument("--coordinator_address", help="host:port of process 0 (or JAX_COORDINATOR_ADDRESS)")
    multi.add_argument("--num_processes", type=int, help="how many processes the job has (or JAX_NUM_PROCESSES)")
    multi.add_argument("--process_id", type=int, help="this process's index, 0 first (or JAX_PROCESS_ID)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list model presets with their parameter counts")
    p.set_defaults(func=cmd_presets)

    gin_stages = [
        ("train", cmd_train, "pretrain from gin files (default: the built-in Markov job)"),
        ("probe", cmd_probe, "influence probe: fine-tune theta' on the reference task, score a corpus"),
        ("influence-server", cmd_influence_server, "serve POST /get_influence and GET /health"),
        ("synthesize", cmd_synthesize, "run a rephrase/reformat generator over organic shards (resumable)"),
        ("grpo", cmd_grpo, "train a rephrase/reformat generator with GRPO (resumable; exports an HF directory)"),
        (
            "loop",
            cmd_loop,
            "SynPro rounds (pretrain, probe, GRPO, synthesize, mix, continue) and the baselines, "
            "resumable through OUT/loop.json",
        ),
    ]
    for name, func, text in gin_stages:
        p = sub.add_parser(name, help=text, description="Extra --gin.KEY=VALUE flags bind gin parameters or macros.")
        p.add_argument(
            "--gin_file",
            action="append",
            default=[],
            help="gin file (repeatable); found in the working directory, --gin_search_paths, or among "
            "the files shipped with synpro_jax",
        )
        p.add_argument(
            "--gin_search_paths",
            action="append",
            default=[],
            help="comma-separated folders to look for gin files and their includes in (repeatable)",
        )
        p.set_defaults(func=func, takes_extra=True)

    p = sub.add_parser(
        "demo",
        help="the whole method on a built-in world of synthetic biographies: oracle, "
        "repetition and SynPro arms, with their result table (resumable)",
        description="Extra --gin.KEY=VALUE flags bind gin parameters or macros.",
    )
    p.add_argument("--out", default="runs/demo", help="the demo's directory (rerun the same command to resume)")
    p.add_argument("--seed", type=int, default=0, help="the world, the teaching and every stage")
    p.add_argument(
        "--quick",
        action="store_true",
        help="under 2 minutes on 2 CPU cores: a smaller world, model and step counts; every stage runs, not the effect",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="also the ablations: no GRPO (the taught generators as they are), rephrase only, reformat only",
    )
    p.add_argument(
        "--corpus",
        nargs="+",
        help="your own text instead of the world: files or globs (.jsonl, .txt, .parquet, ...); needs --reference",
    )
    p.add_argument(
        "--reference",
        nargs="+",
        help="with --corpus: the probe's reference task (FLAN CoT .tsv or prompt/completion .jsonl)",
    )
    p.add_argument(
        "--generator",
        help="an HF OLMo-2 instruct directory both generators start from (e.g. "
        "OLMo-2-0425-1B-Instruct) instead of the taught one",
    )
    p.add_argument("--gin_file", action="append", default=[], help="instead of gin/experiments/demo.gin")
    p.add_argument("--gin_search_paths", action="append", default=[])
    p.set_defaults(func=cmd_demo, takes_extra=True)

    p = sub.add_parser(
        "compile",
        help="compile the pretraining step, the GRPO step and the rollout sampler ahead of "
        "time for a TPU topology (libtpu, no TPU needed) and report their memory per "
        "device",
        description="Extra --gin.KEY=VALUE flags bind gin parameters or macros.",
    )
    p.add_argument("--gin_file", action="append", default=[])
    p.add_argument("--gin_search_paths", action="append", default=[])
    p.add_argument("--topology", default="v5e-8", help="a Cloud TPU name (v5e-8, v4-32, ...) or cpu")
    p.add_argument(
        "--hbm_gib",
        type=float,
        help="HBM per device to check against instead of the topology's (a verdict for --topology=cpu, or a what-if)",
    )
    p.add_argument(
        "--programs",
        default="auto",
        help="comma list of train, grpo, sampler (default: what the experiment runs: train when it "
        "binds synpro.TrainerConfig, grpo and sampler when it binds synpro.grpo)",
    )
    p.add_argument("--json", help="also write the report here")
    p.set_defaults(func=cmd_compile, takes_extra=True)

    p = sub.add_parser(
        "sweep",
        help="run a gin config over the points of a sweep file (grid and zip axes), one "
        "run directory each; done points are skipped on rerun",
        description="Extra --gin.KEY=VALUE flags bind gin parameters or macros for every point.",
    )
    p.add_argument("--gin_file", action="append", default=[], help="the experiment's gin file(s)")
    p.add_argument("--sweep", help="the sweep file: BINDING = [values] lines, grid: and zip: groups")
    p.add_argument(
        "--command",
        default="train",
        choices=["train", "grpo", "probe", "synthesize", "loop", "demo"],
        help="the synpro command each point runs",
    )
    p.add_argument("--out", help="the sweep's directory (default runs/sweep/<sweep file name>)")
    p.add_argument("--dry_run", action="store_true", help="check every point, print their commands, run nothing")
    p.add_argument("--summary", action="store_true", help="gather the points' results into summary.csv/.png")
    p.add_argument("--gin_search_paths", action="append", default=[])
    p.add_argument(
        "--launcher",
        default="local",
        choices=["local", "tpu"],
        help="local: points run here one after another; tpu: each point on its own Cloud TPU slice "
        "(tpu/ scripts: create, install, launch), --out on gs://",
    )
    t = p.add_argument_group("--launcher=tpu", "the tpu/ scripts' flags; every point gets a slice PREFIX-<point>")
    t.add_argument("--tpu_prefix", help="the slices' name prefix (lowercase letters, digits, hyphens)")
    t.add_argument("--zone", help="the slices' zone, e.g. us-west4-a (v5e) or us-central2-b (v4)")
    t.add_argument("--accelerator_type", help="each slice's type, e.g. v5litepod-8 or v4-32")
    t.add_argument("--project", help="the Google Cloud project (default: gcloud's configured project)")
    t.add_argument("--version", help="TPU runtime (default: Google's JAX runtime for the generation)")
    kind = t.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="Spot slices")
    kind.add_argument("--preemptible", action="store_true", help="preemptible slices")
    kind.add_argument("--reserved", action="store_true", help="slices from the project's reservation")
    t.add_argument("--repo", help="git URL the workers clone synpro_jax from")
    t.add_argument("--ref", help="branch, tag or commit of --repo (pin one for a long sweep)")
    t.add_argument("--scp_from", metavar="LOCAL_DIR", help="copy this checkout to the workers instead of git")
    p.set_defaults(func=cmd_sweep, takes_extra=True)

    p = sub.add_parser("vocab", help="vocabulary tools")
    vsub = p.add_subparsers(dest="vocab_command", required=True)
    v = vsub.add_parser("train", help="train a SentencePiece vocabulary on your own text")
    v.add_argument(
        "--corpus",
        nargs="+",
        required=True,
        help="files or globs: .jsonl/.json[.gz|.zst], .txt[.gz|.zst], .parquet, tfds:NAME/SPLIT",
    )
    v.add_argument("--vocab_size", type=int, required=True)
    v.add_argument("--out", required=True, help="output path ending in .model")
    v.add_argument("--text_field", default="text")
    v.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    v.add_argument("--overwrite", action="store_true")
    v.set_defaults(func=cmd_vocab_train)

    p = sub.add_parser("eval", help="perplexity and zero-shot multiple choice (acc, acc_norm) of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="an HF OLMo-2 directory, or a synpro run with --preset")
    p.add_argument(
        "--tasks",
        action="append",
        default=[],
        help="comma list: arc_easy, arc_challenge, sciq, piqa, hellaswag (under --data_root), NAME=PATH, "
        'or FILE.jsonl lines of {"context", "choices", "label"} (repeatable)',
    )
    p.add_argument("--ppl", action="append", default=[], help="held-out documents for perplexity (repeatable)")
    p.add_argument("--data_root", help="folder laid out as ../shared/data/eval")
    p.add_argument("--preset", help="model preset of a synpro run directory")
    p.add_argument("--vocab", help="tokenizer.json or SentencePiece .model (default: found in --checkpoint)")
    p.add_argument("--dtype", help="compute dtype, e.g. bfloat16 (default: the model's)")
    p.add_argument("--limit", type=int, help="first N items of each task")
    p.add_argument("--ppl_limit", type=int, help="first N documents of each --ppl file")
    p.add_argument("--text_field", default="text", help="JSON field of the --ppl documents")
    p.add_argument("--rows", type=int, default=32, help="rows per device call")
    p.add_argument("--max_len", type=int, help="context window (default: the model's max_seq_len)")
    p.add_argument("--all_devices", action="store_true", help="shard the rows over every local device")
    p.add_argument("--out", help="results JSON (default: CHECKPOINT/eval.json)")
    p.add_argument("--no_progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="OpenAI-compatible server (/v1/completions, /v1/chat/completions, /v1/models)")
    p.add_argument("--model", required=True, help="an HF OLMo-2 directory, or a synpro run directory with --preset")
    p.add_argument("--vocab", help="tokenizer.json or SentencePiece .model (default: found in --model)")
    p.add_argument("--preset", help="model preset of a synpro run directory")
    p.add_argument("--dtype", help="compute dtype, e.g. bfloat16 (default: the model's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served_model_name", help="the model id clients name (default: the directory's name)")
    p.add_argument("--max_rows", type=int, default=32, help="most completions in one device call")
    p.add_argument("--batch_wait_ms", type=float, default=5.0, help="wait for concurrent requests to batch")
    p.add_argument("--all_devices", action="store_true", help="shard the batch over every local device")
    p.add_argument("--allow_fault_injection", action="store_true", help="enable POST /synpro/faults (tests)")
    p.add_argument("--faults", help="faults for the first requests, e.g. slow:2:1.5,5xx:1,malformed:1,drop:1")
    p.add_argument(
        "--max_body_bytes",
        type=int,
        default=None,
        help="largest request body (413 past it); default: max(1 MiB, 32 bytes x max_rows x context)",
    )
    p.add_argument(
        "--body_timeout_s", type=float, default=10.0, help="a request body must arrive whole within this (408 after)"
    )
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for a command that restarts itself
    takes_extra = getattr(args, "takes_extra", False)
    if extra and not takes_extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    keep_jax_off_absent_tpu()
    _quiet_startup(needs_tensorflow=takes_extra or args.command in ("vocab", "eval"))
    if args.command not in ("presets", "vocab", "sweep", "compile"):  # jobs that run JAX programs: one job, many hosts
        from synpro_jax import distributed

        try:
            distributed.initialize(
                distributed.DistributedConfig.from_env(
                    coordinator_address=args.coordinator_address,
                    num_processes=args.num_processes,
                    process_id=args.process_id,
                )
            )
        except ValueError as e:  # flags or a TPU environment that describe no job; the message names them
            print(f"error: {errors.one_line(e)}", file=sys.stderr)
            return 2
    try:
        return args.func(args, extra) if takes_extra else args.func(args)
    except Exception as e:
        if not errors.is_user_error(e):
            raise  # a bug: Python prints its traceback and exits 1
        print(f"error: {errors.one_line(e)}", file=sys.stderr)  # names the flag, knob or path to change
        return 2


if __name__ == "__main__":
    sys.exit(main())
