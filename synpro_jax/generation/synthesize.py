"""Bulk synthesis: run a generator over organic shards and write one synthetic record per source document.

Layout of ``out_dir``::

    <shard>.jsonl            finished shards (one per input file), never appended to
    <shard>.jsonl.partial    the shard in progress: whole batches of records, appended and fsynced (on gs://,
                             which cannot append, a folder of one object per batch)
    <shard>.jsonl.meta.json  what made the shard: operation, generator (path, step), seed, sampling knobs,
                             prompt version, vocabulary; written before the shard's first record
    synthesis.json           the manifest: settings, generator, per-shard counts, rate, the DataConfig spec

On N > 1 processes (a pod slice) each host generates, on its own devices, the documents that
:func:`synpro_jax.distributed.host_of` gives it (a hash of the source id), into its own part
``<shard>.host-I-of-N.jsonl`` (with its own ``.partial`` and sidecar), and ``synthesis.host-I-of-N.json``;
process 0 writes the manifest once every host is done. A killed host loses only its unfinished batch.

Resuming: a finished shard is skipped; a partial one is cut back to its last complete line and continued with
the documents it does not hold yet, then renamed into place. So after any kill every source id ends up in
exactly one record. Each record's sample is reproducible: its PRNG stream is derived from its source id, not
from its position in a batch. A shard (finished or partial) whose sidecar differs from this job's settings, or
has none, is never resumed or skipped: the job refuses before any work, naming the shard and the fields, unless
``SynthesisConfig.overwrite`` is set; then that shard is deleted and made again from scratch.

Document rules: the source reader skips empty documents (and counts them in its report). A long source is cut
in the middle, as the release does: first to ``max_source_chars`` characters (a cheap bound before tokenizing),
then in tokens so the prompt is exactly ``max_prompt_tokens``; head and tail are kept with ``CUT_MARKER``
between them, and the record says how much was cut (``source_cut_chars``, ``source_cut_tokens``). Only a prompt
that does not fit even with an empty source gets a ``too_long`` record with empty text. A completion without a
usable answer gets ``no_answer`` and empty text (or its raw text with ``keep_unparsed``, for base models that are
not instruction-tuned). Records with empty text are skipped (and counted) when the shards are read as a seqio
task.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from typing import Any
import zlib

from etils.epath import Path
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from tqdm.auto import tqdm

from synpro_jax import atomic, distributed, heartbeat, sharding
from synpro_jax.checks import positive_ints
from synpro_jax.data import sources
from synpro_jax.errors import ConfigError
from synpro_jax.generation import prompts as prompts_lib
from synpro_jax.generation.continuous import ContinuousBatcher, Request
from synpro_jax.generation.sampler import Sampler
from synpro_jax.models import ModelConfig
from synpro_jax.resume_guard import describe_one, differences, jsonable

log = logging.getLogger(__name__)

MANIFEST = "synthesis.json"
META_SUFFIX = ".meta.json"
STATUSES = ("ok", "no_answer", "unparsed", "too_long")
MAX_SOURCE_CHARS = 20_000  # the release's character cut for bulk inference, before its token cut
# Knobs that do not change any record (each document's sample is independent of its batch).
_NOT_FINGERPRINTED = ("batch_size", "batching", "overwrite")
BATCHING = ("continuous", "static")


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """What to generate and how (gin: ``synpro.SynthesisConfig``)."""

    operation: str  # "rephrase" or "reformat"
    round: int = 1
    max_source_chars: int = MAX_SOURCE_CHARS
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 2048
    batch_size: int = 16  # decode slots (continuous) or rows per call (static)
    # "continuous": documents stream through batch_size decode slots, each refilled as soon as its row ends
    # (generation/continuous.py); "static": batches of batch_size wait for their longest row. Same records.
    batching: str = "continuous"
    temperature: float = 1.0  # the distribution GRPO trained the generator under
    top_p: float | None = 0.9
    top_k: int | None = None
    seed: int = 0
    text_field: str = "text"
    id_field: str | None = None  # None: ids are "<file name>:<line>"
    system_prompt: str = prompts_lib.SYSTEM_PROMPT
    keep_unparsed: bool = False  # keep raw completions that lack the answer heading (base models)
    overwrite: bool = False  # remake shards in out_dir written with other settings instead of refusing

    def __post_init__(self):
        if self.operation not in prompts_lib.OPERATIONS:
            raise ValueError(f"SynthesisConfig.operation={self.operation!r}: choose one of {prompts_lib.OPERATIONS}")
        positive_ints(self, "round", "max_source_chars", "max_prompt_tokens", "max_new_tokens", "batch_size")
        if self.batching not in BATCHING:
            raise ValueError(f"SynthesisConfig.batching={self.batching!r}: choose one of {BATCHING}")
        if self.temperature < 0:
            raise ValueError(f"SynthesisConfig.temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"SynthesisConfig.top_p={self.top_p}: must be in (0, 1] or None")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"SynthesisConfig.top_k={self.top_k}: must be >= 1 or None")


def stream_id(source_id: str) -> int:
    """A stable 31-bit PRNG stream per document, so a resumed job draws the same sample for it."""
    return zlib.crc32(source_id.encode("utf-8")) & 0x7FFFFFFF


def shard_name(path: Path) -> str:
    """The input file's name without its format and compression suffixes."""
    name = path.name
    for suffix in (".gz", ".zst", ".jsonl", ".ndjson", ".json", ".txt", ".parquet"):
        name = name.removesuffix(suffix)
    return name


_HOST_PART = re.compile(r"^(?P<name>.+)\.host-(?P<index>\d+)-of-(?P<count>\d+)\.jsonl$")


def part_name(name: str, index: int = 0, count: int = 1) -> str:
    """The output file of shard ``name`` written by process ``index`` of ``count``: ``name.jsonl`` for one
    process, ``name.host-I-of-N.jsonl`` for several (each host writes the documents :func:`distributed.host_of`
    gives it)."""
    return f"{name}.jsonl" if count == 1 else f"{name}.host-{index}-of-{count}.jsonl"


def _layouts(out: Path) -> dict[str, dict[int, dict[int, str]]]:
    """What earlier runs left in ``out``: shard name -> process count -> part index -> "finished" or "partial"."""
    found: dict[str, dict[int, dict[int, str]]] = {}
    for entry in out.iterdir() if out.is_dir() else []:
        file = entry.name
        state = "partial" if file.endswith(".partial") else "finished"
        file = file.removesuffix(".partial")
        m = _HOST_PART.match(file)
        if m:
            name, index, count = m["name"], int(m["index"]), int(m["count"])
        elif file.endswith(".jsonl"):
            name, index, count = file.removesuffix(".jsonl"), 0, 1
        else:
            continue
        parts = found.setdefault(name, {}).setdefault(count, {})
        if parts.get(index) != "finished":
            parts[index] = state
    return found


def _finished_elsewhere(out: Path, name: str, layouts: dict[int, dict[int, str]], count: int) -> int | None:
    """The process count that finished shard ``name`` already with another split than this job's (then the
    shard is skipped), None if none did. Parts left unfinished by another process count cannot be resumed here:
    refused, naming them."""
    others = {m: parts for m, parts in layouts.items() if m != count}
    if not others:
        return None
    if len(layouts) == 1:
        ((m, parts),) = others.items()
        if sorted(parts) == list(range(m)) and all(v == "finished" for v in parts.values()):
            return m
    files = sorted(
        part_name(name, i, m) + ("" if state == "finished" else ".partial")
        for m, parts in layouts.items()
        for i, state in parts.items()
    )
    raise ValueError(
        f"synthesis shard {name} in {out} was started by {sorted(others)} process(es) and is not finished "
        f"({', '.join(files)}), but this job runs {count}: each process resumes only its own part. Rerun with "
        f"{'/'.join(map(str, sorted(others)))} process(es), or delete those files to synthesize the shard again."
    )


class _Partial:
    """The records of a shard in progress, in whole batches. A local file is appended to and fsynced; object
    stores (gs://) cannot append, so there each batch is one more object under ``<part>.jsonl.partial/``."""

    def __init__(self, final: Path):
        self.final, self.path = final, final.with_name(final.name + ".partial")
        self.remote = atomic.is_remote(final)
        self._next = 0

    def exists(self) -> bool:
        return self.path.exists()

    def _chunks(self) -> list[Path]:
        return sorted(self.path.glob("*.jsonl")) if self.path.is_dir() else []

    def read(self, expect: dict) -> list[str]:
        """The complete records so far (a local file is cut back to them before appending)."""
        if not self.remote:
            kept = _read_partial(self.path, expect)
            atomic.write_text(self.path, "".join(kept))
            return kept
        chunks = self._chunks()
        self._next = 1 + max(int(c.stem) for c in chunks) if chunks else 0
        lines = []
        for c in chunks:
            kept = _read_partial(c, expect)
            if "".join(kept).encode("utf-8") != c.read_bytes():  # its dropped lines are redone: they must go
                atomic.write_text(c, "".join(kept))
            lines += kept
        return lines

    @contextlib.contextmanager
    def appender(self):
        if self.remote:

            def append(text: str) -> None:
                atomic.write_text(self.path / f"{self._next:09d}.jsonl", text)
                self._next += 1

            yield append
            return
        with self.path.open("a", encoding="utf-8") as fh:

            def append(text: str) -> None:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())

            yield append

    def finish(self) -> None:
        """The partial becomes the finished part in one step."""
        if not self.remote:
            os.replace(self.path, self.final)
            return
        chunks = self._chunks()

        def concatenate(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                for c in chunks:
                    fh.write(c.read_bytes())

        atomic.write_file(self.final, concatenate, suffix=".jsonl")
        self.remove()

    def remove(self) -> None:
        if self.path.is_dir():
            self.path.rmtree(missing_ok=True)
        else:
            self.path.unlink(missing_ok=True)


def meta_path(final: Path) -> Path:
    """The sidecar that says what made ``final`` and its ``.partial``."""
    return final.with_name(final.name + META_SUFFIX)


def weights_identity(params: Any, head: int = 4096) -> str:
    """sha256 over the first ``head`` values of every weight tensor, as exact bytes (no sums whose order could
    drift between meshes): tells apart two exports to one path, e.g. a GRPO generator re-saved each round."""
    leaves = jax.tree.leaves(params)
    heads = jax.jit(lambda ls: [x.reshape(-1)[:head].astype(jnp.float32) for x in ls])(leaves)
    digest = hashlib.sha256()
    for x in heads:  # a host's own copy is read as is; a global array is gathered
        digest.update(sharding.to_host(x).tobytes())
    return digest.hexdigest()


def _canonical_generator(generator: str) -> str:
    """An absolute local path, so a relative and an absolute spelling agree; URLs and "" as given."""
    return generator if not generator or "://" in generator else os.path.abspath(generator)


def fingerprint_diff(old: dict | None, new: dict) -> list[str]:
    """The fields that differ between a shard's recorded fingerprint and this job's (resume_guard's rule)."""
    if not isinstance(old, dict):
        return ["no readable fingerprint (written by an older synpro, or its sidecar was lost)"]
    return [describe_one(d) for d in differences(old, jsonable(new))]


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s)", path, e)
        return None
    return meta.get("fingerprint") if isinstance(meta, dict) else None


def _read_partial(path: Path, expect: dict) -> list[str]:
    """Complete JSON lines of a partial shard (a line cut by a kill is dropped and will be redone). Every record
    must carry ``expect``'s values: a second guard, beside the sidecar, against mixing generators."""
    lines = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                log.warning("%s:%d: incomplete last line dropped (the job was stopped while writing)", path, lineno)
                break
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("%s:%d: unreadable line dropped; its document will be redone", path, lineno)
                continue
            wrong = {k: record.get(k) for k, v in expect.items() if record.get(k) != v}
            if wrong:
                raise ValueError(
                    f"{path}:{lineno}: a record with {wrong}, but this job writes "
                    f"{ {k: expect[k] for k in wrong} }; use another out_dir or set "
                    "synpro.SynthesisConfig.overwrite = True"
                )
            lines.append(raw.decode("utf-8"))
    return lines


def _write_atomic(path: Path, text: str) -> None:
    atomic.write_text(path, text)


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A document's prompt ids (None: too long even with an empty source) and how much of the source was cut."""

    ids: list[int] | None
    empty_len: int  # the prompt's length with an empty source
    cut_chars: int = 0
    cut_tokens: int = 0


class PromptBuilder:
    """Token ids of the generator prompt for one document: the chat text around the document is tokenized once,
    the document on its own, and its middle is cut (characters, then tokens) as the release does."""

    def __init__(self, vocab, settings: SynthesisConfig, template: prompts_lib.ChatTemplate = prompts_lib.OLMO2_CHAT):
        self.vocab, self.settings = vocab, settings
        before, after = prompts_lib.prompt_parts(settings.operation, template, settings.system_prompt)
        self.before, self.after = list(vocab.encode(before)), list(vocab.encode(after))
        self.marker = list(vocab.encode(prompts_lib.CUT_MARKER))
        self.text_sha256 = hashlib.sha256(
            json.dumps([before, after, prompts_lib.CUT_MARKER]).encode("utf-8")
        ).hexdigest()

    def __call__(self, text: str) -> Prompt:
        s = self.settings
        text = text.strip()
        head, tail = prompts_lib.middle_cut(text, s.max_source_chars)
        cut_chars = len(text) - len(head) - len(tail or "")
        empty = len(self.before) + len(self.after)
        fitted = prompts_lib.fit_source(
            self.before,
            self.vocab.encode(head),
            None if tail is None else self.vocab.encode(tail),
            self.after,
            self.marker,
            s.max_prompt_tokens,
        )
        if fitted is None:
            return Prompt(None, empty, cut_chars)
        ids, cut_tokens = fitted
        return Prompt(ids, empty, cut_chars, cut_tokens)


class Synthesizer:
    """A generator placed on a mesh with its vocabulary, writing synthetic shards."""

    def __init__(
        self,
        cfg: ModelConfig,
        params: Any,
        vocab,
        settings: SynthesisConfig,
        *,
        mesh: Mesh | None = None,
        generator: str = "",
        generator_step: int = 0,
        template: prompts_lib.ChatTemplate = prompts_lib.OLMO2_CHAT,
        stop_ids: Sequence[int] = (),
        documents: Collection[str] | None = None,
    ):
        """``documents``: synthesize only the source documents with these ids (e.g. the training split of a
        run's organic corpus, so held-out validation documents never reach pretraining as synthetic text)."""
        self.cfg, self.vocab, self.settings = cfg, vocab, settings
        self.documents = None if documents is None else frozenset(map(str, documents))
        self.sampler = Sampler(cfg, params, mesh=mesh)
        self.generator, self.generator_step = generator, int(generator_step)
        self.generator_weights = weights_identity(params)
        self.template = template
        self.stop_ids = sorted({int(vocab.eos_id), *map(int, stop_ids)})
        if settings.max_prompt_tokens + settings.max_new_tokens > cfg.max_seq_len:
            raise ValueError(
                f"SynthesisConfig.max_prompt_tokens={settings.max_prompt_tokens} + max_new_tokens="
                f"{settings.max_new_tokens} exceeds the generator's max_seq_len={cfg.max_seq_len}"
            )
        self.prompts = PromptBuilder(vocab, settings, template)
        self._batcher: ContinuousBatcher | None = None

    def batcher(self) -> ContinuousBatcher:
        """The continuous batcher (built once: its caches live as long as the Synthesizer)."""
        if self._batcher is None:
            s, shards = self.settings, self.sampler.batch_shards
            self._batcher = ContinuousBatcher(
                self.sampler,
                slots=-(-s.batch_size // shards) * shards,
                max_prompt_tokens=s.max_prompt_tokens,
                max_new_tokens=s.max_new_tokens,
                eos_id=self.stop_ids,
                pad_id=0,
            )
        return self._batcher

    # --- what made a shard -----------------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """Everything that decides a shard's records, so a resumed shard never mixes two of them: the operation,
        the generator (path, step, compute dtype), the seed and sampling knobs, the prompt (version and text) and
        the vocabulary. JSON-normalized, as it is stored."""
        s = {k: v for k, v in dataclasses.asdict(self.settings).items() if k not in _NOT_FINGERPRINTED}
        probe = [int(i) for i in self.vocab.encode("Synthesis fingerprint: Ünïcode, digits 0123456789 and\ta tab.")]
        fp = {
            **s,
            "generator": _canonical_generator(self.generator),
            "generator_step": self.generator_step,
            "generator_weights": self.generator_weights,
            "generator_dtype": self.cfg.dtype,
            "prompt_version": prompts_lib.PROMPT_VERSION,
            "prompt_sha256": self.prompts.text_sha256,
            "stop_ids": self.stop_ids,
            **({} if self.documents is None else {"documents": selection_identity(self.documents)}),
            "vocabulary": {
                "size": int(self.vocab.vocab_size),
                "eos_id": int(self.vocab.eos_id),
                "probe_sha256": hashlib.sha256(json.dumps(probe).encode()).hexdigest(),
            },
        }
        return json.loads(json.dumps(fp))

    def _conflicts(self, out: Path, finals: Sequence[Path], every: bool) -> dict[Path, list[str]]:
        """Shards among ``finals`` (and, with ``every``, all others in ``out``) holding records made otherwise
        than this job would make them."""
        fp = self.fingerprint()
        finals = set(finals)
        if every:
            finals |= set(out.glob("*.jsonl"))
            finals |= {p.with_name(p.name.removesuffix(".partial")) for p in out.glob("*.jsonl.partial")}
        conflicts = {}
        for final in sorted(finals):
            partial = final.with_name(final.name + ".partial")
            if final.exists() or partial.exists():
                diff = fingerprint_diff(_read_meta(meta_path(final)), fp)
                if diff:
                    conflicts[final] = diff
        return conflicts

    def _claim(self, out: Path, finals: Sequence[Path], every: bool = False) -> None:
        """Refuse to touch shards made otherwise (or, with ``overwrite``, delete them so they are made afresh)."""
        conflicts = self._conflicts(out, finals, every)
        if not conflicts:
            return
        lines = [
            f"  {final.name}{' (partial)' if not final.exists() else ''}: " + "; ".join(diff)
            for final, diff in conflicts.items()
        ]
        if not self.settings.overwrite:
            raise ConfigError(
                f"synthesis out_dir {out} holds shards made with other settings than this job's; resuming would mix "
                "them:\n" + "\n".join(lines) + "\nUse another out_dir, or set synpro.SynthesisConfig.overwrite = "
                "True (--gin.synpro.SynthesisConfig.overwrite=True) to delete and remake these shards."
            )
        if jax.process_index() != 0:  # process 0 deletes; run() waits for it before any host writes
            return
        for final in conflicts:
            log.warning("overwrite: deleting %s (made with other settings) to remake it", final)
            _Partial(final).remove()
            for path in (final, meta_path(final)):
                path.unlink(missing_ok=True)

    # --- one document ----------------------------------------------------------------------------------------
    def prompt_tokens(self, text: str) -> list[int] | None:
        """The prompt ids for a source document (its middle cut to fit), None if even an empty source is too long."""
        return self.prompts(text).ids

    def _record(
        self,
        doc_id: str,
        source_chars: int,
        prompt: Prompt,
        status: str,
        text: str = "",
        output: str = "",
        completion_tokens: int = 0,
        finished: bool = False,
    ) -> dict:
        s = self.settings
        return {
            "source_id": doc_id,
            "operation": s.operation,
            "round": s.round,
            "generator": self.generator,
            "generator_step": self.generator_step,
            "text": text,
            "status": status,
            "source_chars": source_chars,
            "source_cut_chars": prompt.cut_chars,
            "source_cut_tokens": prompt.cut_tokens,
            "prompt_tokens": prompt.empty_len if prompt.ids is None else len(prompt.ids),
            "completion_tokens": completion_tokens,
            "finished": finished,
            "output": output,
        }

    def _generate(self, batch: list[tuple[str, int, Prompt]]) -> list[dict]:
        """Records for one static batch."""
        s = self.settings
        out = self.sampler.generate(
            [p.ids for _, _, p in batch],
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            seed=s.seed,
            eos_id=self.stop_ids,
            pad_id=0,
            stream_ids=[stream_id(doc_id) for doc_id, _, _ in batch],
        )
        return [self._completed(item, ids, fin) for item, ids, fin in zip(batch, out.completions(), out.finished)]

    def batching_stats(self) -> dict:
        """This Synthesizer's continuous batcher so far: slots, chunks, prefill padding and decode occupancy (the
        fraction of decode row-steps that made a token); {} for static batching."""
        b = self._batcher
        if b is None:
            return {}
        st = b.stats
        return {
            "slots": b.slots,
            "chunks": st["chunks"],
            "decode_steps": st["decode_steps"],
            "generated_tokens": st["generated_tokens"],
            "occupancy": round(b.occupancy(), 4),
            "prefill_calls": st["prefill_calls"],
            "prefill_tokens": st["prefill_tokens"],
            "prefill_padding": round(1 - st["prefill_tokens"] / max(st["prefill_slots"], 1), 4),
        }

    def _request(self, doc_id: str, prompt: Prompt) -> Request:
        s = self.settings
        return Request(
            prompt.ids,
            s.max_new_tokens,
            stream_id=stream_id(doc_id),
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            seed=s.seed,
        )

    def _completed(self, item: tuple[str, int, Prompt], ids: list[int], finished: bool) -> dict:
        """A document's record from its completion ids (a final stop id included when ``finished``)."""
        s = self.settings
        doc_id, chars, prompt = item
        body = ids[:-1] if finished else ids  # drop the stop token
        output = self.vocab.decode(body)
        text = prompts_lib.synthetic_text(output, s.operation)
        status = "ok" if text else "no_answer"
        if not text and s.keep_unparsed and output.strip():
            text, status = output.strip(), "unparsed"
        return self._record(doc_id, chars, prompt, status, text, output, len(ids), bool(finished))

    def _write(self, append, records: list[dict]) -> None:
        """Append whole records to the partial shard (one fsynced write)."""
        append("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    # --- one shard -------------------------------------------------------------------------------------------
    def _documents(self, path: Path):
        s = self.settings
        return sources.open_source(str(path), text_field=s.text_field, id_field=s.id_field)

    def run_shard(self, path: Path, out_dir: Path, progress=None, share: distributed.HostShare | None = None) -> dict:
        """Synthesize this process's share of one input file (every document on one process) into
        out_dir/<part>.jsonl, resuming its partial records if there are some."""
        share = share or distributed.HostShare("synthesis", out_dir)
        final = out_dir / part_name(shard_name(path), share.index, share.count)
        partial = _Partial(final)
        self._claim(out_dir, [final])
        if final.exists():
            if partial.exists():  # killed while the remote chunks behind this part were being removed
                partial.remove()
            if progress is not None:
                progress(_count_lines(path), 0)
            return {"shard": final.name, "skipped": "finished earlier"}
        if not partial.exists():  # the sidecar comes first: records never exist without one
            _write_atomic(
                meta_path(final),
                json.dumps({"shard": final.name, "source": str(path), "fingerprint": self.fingerprint()}, indent=2)
                + "\n",
            )
        s = self.settings
        expect = {"operation": s.operation, "round": s.round, "generator_step": self.generator_step}
        kept = partial.read(expect) if partial.exists() else []
        done = {json.loads(line)["source_id"] for line in kept}
        if progress is not None and done:
            progress(len(done), 0)
        counts = {k: 0 for k in STATUSES} | {
            "resumed": len(done),
            "duplicate_ids": 0,
            "completion_tokens": 0,
            "source_cut": 0,
            "not_selected": 0,
            "other_hosts": 0,
        }
        source = self._documents(path)
        seen = set(done)
        batch: list[tuple[str, int, Prompt]] = []
        with partial.appender() as append:

            def flush(records: list[dict]) -> None:
                if not records:
                    return
                self._write(append, records)
                for r in records:
                    counts[r["status"]] += 1
                    counts["completion_tokens"] += r["completion_tokens"]
                    counts["source_cut"] += bool(r["source_cut_chars"] or r["source_cut_tokens"])
                if progress is not None:
                    progress(len(records), sum(r["completion_tokens"] for r in records))

            def work():
                """This shard's documents to generate, in order; a too-long one is a record at once."""
                for doc in source:
                    heartbeat.beat()
                    if not share.owns(doc.id):
                        counts["other_hosts"] += 1
                        if progress is not None:
                            progress(1, 0)
                        continue
                    if doc.id in seen:
                        if doc.id not in done:
                            counts["duplicate_ids"] += 1
                            log.warning("%s: document id %r repeats; only its first occurrence is used", path, doc.id)
                        continue
                    seen.add(doc.id)
                    if self.documents is not None and doc.id not in self.documents:
                        counts["not_selected"] += 1
                        if progress is not None:
                            progress(1, 0)
                        continue
                    text = doc.text or ""
                    prompt = self.prompts(text)
                    if prompt.ids is None:
                        yield self._record(doc.id, len(text), prompt, "too_long")
                    else:
                        yield doc.id, len(text), prompt

            if s.batching == "static":
                for item in work():
                    if isinstance(item, dict):
                        flush([item])
                        continue
                    batch.append(item)
                    if len(batch) == s.batch_size:
                        flush(self._generate(batch))
                        batch = []
                flush(self._generate(batch) if batch else [])
            else:
                self._stream(work(), flush)
        partial.finish()
        counts["read"] = source.report.summary()
        return {"shard": final.name, **counts}

    def _stream(self, work: Iterator, flush) -> None:
        """Documents through the continuous batcher; records are flushed in document order, each time the next
        ones in order are done (so a partial shard holds whole records, as with static batches)."""
        batcher = self.batcher()
        if batcher.busy():  # left over from an interrupted shard: its documents are redone from the partial
            batcher.reset()
        ready: dict[int, dict] = {}  # position in the shard -> its record, waiting for those before it
        items: dict[int, tuple[str, int, Prompt]] = {}
        written = seq = 0
        more = True

        def emit() -> None:  # the records next in document order, as one write
            nonlocal written
            records = []
            while written in ready:
                records.append(ready.pop(written))
                written += 1
            flush(records)

        while True:
            while more and batcher.waiting < batcher.groups - batcher.live + batcher.refill_min:
                item = next(work, None)
                if item is None:
                    more = False
                    break
                if isinstance(item, dict):  # too long to generate: written as soon as its turn comes
                    ready[seq] = item
                    emit()
                else:
                    items[seq] = item
                    batcher.add(seq, self._request(item[0], item[2]))
                seq += 1
            for key, (completion,) in batcher.step():
                ready[key] = self._completed(items.pop(key), completion.tokens, completion.finished)
            emit()
            if not more and not batcher.busy():
                break

    def run(self, shards: Sequence[str], out_dir: str | Path, progress: bool = True) -> dict:
        """Synthesize every input file; returns (and writes) the manifest.

        On several processes each host writes its own part of every shard (the documents
        :func:`distributed.host_of` gives it), on its own devices; the job's files hold every document once
        whichever hosts were killed, and a rerun with the same process count resumes each part."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        index, count = jax.process_index(), jax.process_count()
        files = sources.expand_paths(list(shards), "synthesis shards")
        names: dict[str, Path] = {}
        for f in files:
            other = names.setdefault(shard_name(f), f)
            if other != f:
                raise ValueError(
                    f"synthesis shards {other} and {f} would both write {shard_name(f)}.jsonl; "
                    "rename one or synthesize them into different out_dirs"
                )
        # Every shard in out_dir is checked before any work: the DataConfig glob reads them all together.
        self._claim(out, [], every=True)
        if index == 0:  # a part finished just before a kill removed its remote chunks: they are done with
            for leftover in out.glob("*.jsonl.partial"):
                final = leftover.with_name(leftover.name.removesuffix(".partial"))
                if final.exists():
                    _Partial(final).remove()
        distributed.barrier(f"synthesis claimed {out}")  # what overwrite deletes is gone before anyone looks
        share = distributed.HostShare("synthesis", out)
        layouts = _layouts(out)
        elsewhere = {name: _finished_elsewhere(out, name, layouts.get(name, {}), count) for name in names}
        share.listed()  # no host writes before all have looked
        bar = _progress_bar(files, progress)
        start, tokens = time.perf_counter(), [0]

        def advance(docs: int, new_tokens: int) -> None:
            tokens[0] += new_tokens
            if bar is not None:
                bar.update(docs)
                bar.set_postfix(tok_s=f"{tokens[0] / max(time.perf_counter() - start, 1e-9):,.0f}", refresh=False)

        results = []
        try:
            for f in files:
                if elsewhere[shard_name(f)] is not None:
                    advance(_count_lines(f), 0)
                    results.append(
                        {
                            "shard": shard_name(f),
                            "skipped": f"finished earlier by {elsewhere[shard_name(f)]} process(es)",
                        }
                    )
                else:
                    results.append(self.run_shard(f, out, advance, share))
                log.info("synthesis %s", results[-1])
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - start
        hosts = share.gather({"shards": results, "completion_tokens": tokens[0], "seconds": elapsed})
        if count > 1:  # each host's own account, added up
            results = [{**r, "host": i} for i, h in enumerate(hosts) for r in h["shards"]]
            tokens[0] = sum(h["completion_tokens"] for h in hosts)
            elapsed = max(h["seconds"] for h in hosts)
        s = self.settings
        manifest = {
            "operation": s.operation,
            "round": s.round,
            "generator": self.generator,
            "generator_step": self.generator_step,
            "settings": dataclasses.asdict(s),
            "prompt_version": prompts_lib.PROMPT_VERSION,
            "fingerprint": self.fingerprint(),
            "processes": count,
            "shards": results,
            "completion_tokens": tokens[0],
            "seconds": round(elapsed, 3),
            "tokens_per_second": tokens[0] / elapsed if elapsed > 0 else 0.0,
            "batching": {"mode": s.batching, **self.batching_stats()},
            "data_config_synthetic": synthetic_spec(s.operation, s.round, out),
        }
        if index == 0:
            _write_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        share.merged()
        return manifest


def selection_identity(ids) -> dict:
    """A set of source ids as it is fingerprinted: its size and the sha256 of the sorted ids."""
    ids = sorted(map(str, ids))
    return {"count": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


def synthetic_spec(operation: str, round_: int, out_dir: str | Path) -> str:
    """The ``DataConfig.synthetic`` entry (gin) that mixes these shards into pretraining."""
    return f"({operation!r}, {round_}, {str(Path(out_dir) / '*.jsonl')!r})"


def _count_lines(path: Path) -> int:
    """Non-blank lines of a JSON-lines file, plain or compressed (its document count, give or take malformed
    lines); 0 for other formats or a file that cannot be read to the end."""
    if sources.format_of(path) != "jsonl":
        return 0
    try:
        with sources.open_binary(path) as fh:
            return sum(1 for line in fh if line.strip())
    except (OSError, EOFError):
        return 0


def _progress_bar(files: Sequence[Path], enabled: bool):
    """Documents done, with rate and ETA (the total counts JSON lines; other formats show the rate only)."""
    if not enabled:
        return None
    counts = [_count_lines(f) for f in files]
    total = sum(counts) if all(counts) else None
    return tqdm(total=total, unit="doc", desc=f"synthesize {len(files)} shard(s)", dynamic_ncols=True)


def iter_records(out_dir: str | Path) -> Iterator[dict]:
    """Every record of the finished shards in out_dir."""
    for path in sorted(Path(out_dir).glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)
