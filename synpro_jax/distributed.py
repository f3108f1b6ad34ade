"""Several hosts as one job: starting jax.distributed, hosts agreeing on values, and SIGTERM stops every host
after the same step.

On a Cloud TPU VM that is one host of several (a GCE slice, whose metadata server lists the workers, or GKE, whose
environment does) ``jax.distributed.initialize()`` finds the coordinator itself; elsewhere (GPU clusters,
several local CPU processes in tests) it takes ``--coordinator_address``, ``--num_processes`` and
``--process_id`` (or JAX's own JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import zlib

from etils.epath import Path
import jax
from jax.experimental import multihost_utils
import numpy as np

from synpro_jax import atomic, tpu_chips
from synpro_jax.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    coordinator_address: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None

    @classmethod
    def from_env(cls, **flags) -> DistributedConfig:
        """Flags win; JAX's environment variables fill what they leave unset."""
        env = {
            "coordinator_address": os.environ.get("JAX_COORDINATOR_ADDRESS"),
            "num_processes": os.environ.get("JAX_NUM_PROCESSES"),
            "process_id": os.environ.get("JAX_PROCESS_ID"),
        }
        merged = {k: flags.get(k) if flags.get(k) is not None else v for k, v in env.items()}
        for key in ("num_processes", "process_id"):
            if merged[key] is not None:
                try:
                    merged[key] = int(merged[key])
                except ValueError:
                    raise ValueError(f"--{key}={merged[key]!r}: must be an integer") from None
        return cls(**merged, local_device_ids=flags.get("local_device_ids"))

    @property
    def explicit(self) -> bool:
        return any(v is not None for v in (self.coordinator_address, self.num_processes, self.process_id))

    def check(self) -> None:
        missing = [k for k in ("coordinator_address", "num_processes", "process_id") if getattr(self, k) is None]
        if self.explicit and missing:
            raise ValueError(
                f"multi-process JAX needs --coordinator_address, --num_processes and --process_id "
                f"together; missing {', '.join('--' + m for m in missing)}"
            )
        if self.explicit and not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"--process_id={self.process_id}: must be in [0, --num_processes={self.num_processes})")


# Where a Cloud TPU VM learns its slice, as JAX's own cluster detection reads it (jax/_src/clusters/
# cloud_tpu_cluster.py): GKE injects the workers as environment variables; a GCE TPU VM (tpu-vm create, queued
# resources) has them only in its metadata server.
GKE_WORKER_VARS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")
METADATA_URL = "http://{host}/computeMetadata/v1/instance/attributes/{key}"


def _has_tpu_chips() -> bool:
    """TPU chips attached to this VM, with libtpu to drive them: JAX's own test before it reads any TPU
    metadata."""
    return importlib.util.find_spec("libtpu") is not None and tpu_chips.present()


class MetadataUnavailable(OSError):
    pass


def gce_metadata(key: str, timeout_s: float = 5.0, tries: int = 3) -> str | None:
    """An attribute of this VM from the GCE metadata server (GCE_METADATA_IP, as JAX reads it), or None when the
    server says there is no such attribute. Raises MetadataUnavailable when no server answers."""
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
    url = METADATA_URL.format(host=host, key=key)
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    last = ""
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.read().decode()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = str(getattr(e, "reason", e))
        if attempt + 1 < tries:
            time.sleep(0.5)
    raise MetadataUnavailable(f"{url}: {last}")


def _workers(listing: str | None) -> int:
    return len([w for w in (listing or "").split(",") if w.strip()])


def tpu_cluster() -> tuple[str, int] | None:
    """("gke" or "gce", hosts in the job) on a Cloud TPU VM, None elsewhere. Multislice jobs
    (MEGASCALE_NUM_SLICES) count every slice's hosts."""
    slices = int(os.environ.get("MEGASCALE_NUM_SLICES") or 1)
    for var in GKE_WORKER_VARS:
        if os.environ.get(var):
            return "gke", _workers(os.environ[var]) * slices
    if not _has_tpu_chips() or os.environ.get("TPU_SKIP_MDS_QUERY"):
        return None
    try:
        endpoints = gce_metadata("worker-network-endpoints")
        tpu_env = "" if "MEGASCALE_NUM_SLICES" in os.environ else gce_metadata("tpu-env") or ""
    except MetadataUnavailable as e:
        # Guessing "one host" here would run every host of a slice as its own job, writing over each other.
        raise ValueError(
            f"this VM has TPU chips but its GCE metadata server did not answer ({e}), so whether it is "
            "one host of a slice is unknown: set TPU_SKIP_MDS_QUERY=1 to run it as one host, or pass "
            "--coordinator_address, --num_processes and --process_id"
        ) from None
    if endpoints is None:
        return None
    if tpu_env:
        for line in tpu_env.splitlines():  # "MEGASCALE_NUM_SLICES: '2'"
            key, _, value = line.partition(":")
            if key.strip() == "MEGASCALE_NUM_SLICES" and value.strip().strip("'"):
                slices = int(value.strip().strip("'"))
    return "gce", _workers(endpoints) * slices


def on_multihost_tpu() -> bool:
    """A Cloud TPU VM that is one of several hosts of a job (a pod slice, or several slices)."""
    cluster = tpu_cluster()
    return cluster is not None and cluster[1] > 1


def initialize(config: DistributedConfig | None = None) -> bool:
    """Start jax.distributed when this is one process of several; returns whether it did. Call it before any
    other JAX call (the CLI does, for every command)."""
    config = config or DistributedConfig.from_env()
    config.check()
    if config.explicit:
        jax.distributed.initialize(
            config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
            local_device_ids=list(config.local_device_ids) if config.local_device_ids else None,
        )
    elif on_multihost_tpu():
        jax.distributed.initialize()  # JAX's cluster detection finds the coordinator and this host's id
    else:
        return False
    log.info(
        "jax.distributed: process %d of %d, %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def agree(value: str, what: str) -> None:
    """Every process must hold the same ``value`` (a run directory, a config fingerprint); a clear error naming
    ``what`` and process 0's value otherwise. A no-op on one process."""
    if jax.process_count() == 1:
        return
    digest = np.frombuffer(hashlib.sha256(value.encode()).digest()[:8], np.int64)
    digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(-1)
    if len(set(digests.tolist())) > 1:
        differ = [i for i, d in enumerate(digests.tolist()) if d != digests[0]]
        raise ConfigError(
            f"hosts disagree on {what}: process {jax.process_index()} has {value!r}; processes "
            f"{differ} differ from process 0. Launch every host with the same configuration."
        )


def host_of(key: str, num_processes: int | None = None) -> int:
    """The process that handles a document in bulk jobs (synthesis, corpus scoring): a stable hash of its id, so
    the split depends neither on reading order nor on batch sizes, and every copy of a repeated id lands on one
    host."""
    n = jax.process_count() if num_processes is None else num_processes
    return zlib.crc32(str(key).encode("utf-8")) % n


def barrier(name: str) -> None:
    """Every process waits here for the others (a no-op on one process): e.g. all have listed what earlier runs
    left before any writes more."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class HostShare:
    """One host's share of a bulk job over keyed documents, done exactly once across hosts: the corpus scoring of
    influence/probe.py and the synthesis of generation/synthesize.py both run this way.

    1. every host lists what earlier runs finished, then waits at :meth:`listed` (no host writes before all
       have looked);
    2. each host works on the documents :func:`host_of` gives it (:meth:`owns`, :meth:`mine`) and writes its own
       files, each atomically, so a killed host loses only its unfinished part and a rerun redoes only that;
    3. :meth:`gather` waits for every host and gives each host's account of its work; process 0 writes what
       merges them, and :meth:`merged` waits for that before anyone reads it.
    On one process every document is the host's and the waits are no-ops.
    """

    def __init__(self, job: str, out_dir):
        self.job, self.out_dir = job, Path(out_dir)
        self.index, self.count = jax.process_index(), jax.process_count()

    def owns(self, key: str) -> bool:
        return self.count == 1 or host_of(key, self.count) == self.index

    def mine(self, keys) -> list[int]:
        """Indices of the keys this host handles, in order."""
        return [i for i, k in enumerate(keys) if self.owns(k)]

    def listed(self) -> None:
        barrier(f"{self.job} listed {self.out_dir}")

    def gather(self, account: dict | None = None) -> list[dict]:
        """Wait for every host to finish its share; with ``account`` (JSON), every host's, in process order (read
        from ``out_dir``, which every host sees)."""
        if account is not None and self.count > 1:
            atomic.write_json(self._account(self.index), account)
        barrier(f"{self.job} done {self.out_dir}")
        if account is None:
            return []
        if self.count == 1:
            return [account]
        return [json.loads(self._account(i).read_text()) for i in range(self.count)]

    def merged(self) -> None:
        barrier(f"{self.job} merged {self.out_dir}")

    def _account(self, index: int) -> Path:
        return self.out_dir / f"{self.job}.host-{index}-of-{self.count}.json"


def _sync_manager_ready() -> bool:
    try:
        from jax._src import distributed as _distributed  # private: probed, absent in some jax versions

        return _distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


class Preemption:
    """SIGTERM, as a stop every process takes after the same step.

    One process: a Python handler sets a flag that :meth:`stop_after` reads. Several: JAX's preemption notifier
    (started by jax.distributed) catches SIGTERM on any host and ``reached_preemption_sync_point`` turns it
    into one agreed step, without a collective per step; where that service is missing the local flags are
    all-gathered instead. Use as a context manager around the step loop; call :meth:`stop_after` on every
    process at every step.
    """

    def __init__(self):
        self._flag = threading.Event()
        self._previous = None
        self._installed = False
        self._sync = jax.process_count() > 1 and _sync_manager_ready()

    def request(self) -> None:
        """Ask for a stop as SIGTERM does (this process only; with several processes only SIGTERM is seen by
        the sync service)."""
        self._flag.set()

    def __enter__(self) -> Preemption:
        if not self._sync and threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, lambda *_: self._flag.set())
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def stop_after(self, step: int) -> bool:
        """Whether every process stops after ``step`` (the same answer on all of them)."""
        if self._sync:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        if jax.process_count() > 1:
            flags = multihost_utils.process_allgather(np.int32(self._flag.is_set()))
            return bool(np.max(np.asarray(flags)))
        return self._flag.is_set()


def write_config_record(out_dir, text: str | None) -> None:
    """``out_dir/config.gin``: the configuration that made a run, written atomically by process 0 alone (one writer
    for a shared file). ``text`` None (a job called from Python, not from gin files) writes nothing."""
    if text is None or jax.process_index() != 0:
        return
    atomic.write_text(Path(out_dir) / "config.gin", text)
