"""Start-up on a Cloud TPU slice: the CLI starts jax.distributed on every multi-host TPU VM, found the way JAX's own
cluster detection finds it: a GCE TPU VM from its metadata server (simulated here by a local HTTP server speaking
the metadata protocol), a GKE pod from its environment. A single-host VM and a CPU machine start nothing."""

import http.server
import threading

import pytest

from synpro_jax import distributed


class Metadata(http.server.ThreadingHTTPServer):
    """The GCE metadata server's instance attributes, on 127.0.0.1 (reached through GCE_METADATA_IP)."""

    def __init__(self, attributes: dict[str, str]):
        self.attributes, self.requests = attributes, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Metadata-Flavor")))
                key = self.path.rsplit("/", 1)[-1]
                flavored = self.headers.get("Metadata-Flavor") == "Google"
                if not flavored or key not in server.attributes:
                    self.send_response(403 if not flavored else 404)
                    self.end_headers()
                    return
                body = server.attributes[key].encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def clean_env(monkeypatch):
    """No TPU environment at all (jax itself sets TPU_SKIP_MDS_QUERY on a machine without chips)."""
    for var in (
        *distributed.GKE_WORKER_VARS,
        "TPU_SKIP_MDS_QUERY",
        "MEGASCALE_NUM_SLICES",
        "GCE_METADATA_IP",
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
    ):
        monkeypatch.delenv(var, raising=False)
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    return calls


@pytest.fixture
def gce_vm(monkeypatch, clean_env):
    """A TPU VM with chips and a metadata server; returns a function that sets its attributes."""
    monkeypatch.setattr(distributed, "_has_tpu_chips", lambda: True)
    servers = []

    def serve(**attributes):
        server = Metadata(attributes)
        servers.append(server)
        monkeypatch.setenv("GCE_METADATA_IP", server.address)
        return server

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_v4_32_on_gce_starts_jax_distributed_from_its_metadata(gce_vm, clean_env):
    server = gce_vm(
        **{
            "worker-network-endpoints": "t1v-n-0:0:10.0.0.2,t1v-n-1:1:10.0.0.3,t1v-n-2:2:10.0.0.4,t1v-n-3:3:10.0.0.5",
            "agent-worker-number": "2",
            "tpu-env": "ACCELERATOR_TYPE: 'v4-32'\n",
        }
    )
    assert distributed.tpu_cluster() == ("gce", 4)
    assert distributed.initialize(distributed.DistributedConfig()) is True
    assert clean_env == [((), {})]  # no arguments: JAX's GceTpuCluster reads the coordinator and id itself
    assert all(flavor == "Google" for _, flavor in server.requests)


def test_a_gce_multislice_job_counts_every_slice(gce_vm):
    gce_vm(**{"worker-network-endpoints": "10.0.0.2", "tpu-env": "MEGASCALE_NUM_SLICES: '2'\nWORKER_ID: '0'\n"})
    assert distributed.tpu_cluster() == ("gce", 2)
    assert distributed.on_multihost_tpu()


def test_a_single_host_gce_vm_starts_nothing(gce_vm, clean_env):
    gce_vm(**{"worker-network-endpoints": "t1v-n-0:0:10.0.0.2", "tpu-env": ""})  # a v5e-8: one host
    assert distributed.tpu_cluster() == ("gce", 1)
    assert distributed.initialize(distributed.DistributedConfig()) is False and clean_env == []


def test_gke_is_found_from_its_environment_without_a_metadata_server(monkeypatch, clean_env):
    monkeypatch.setattr(distributed, "gce_metadata", lambda *a, **k: pytest.fail("GKE needs no metadata"))
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w-0.svc,w-1.svc,w-2.svc,w-3.svc")
    assert distributed.tpu_cluster() == ("gke", 4)
    assert distributed.initialize(distributed.DistributedConfig()) is True and clean_env == [((), {})]
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setenv("TPU_PROCESS_ADDRESSES", "10.1.0.1:8476,10.1.0.2:8476")
    assert distributed.tpu_cluster() == ("gke", 2)


def test_no_tpu_no_metadata_query_and_nothing_started(monkeypatch, clean_env):
    monkeypatch.setattr(distributed, "gce_metadata", lambda *a, **k: pytest.fail("asked a metadata server"))
    monkeypatch.setattr(distributed, "_has_tpu_chips", lambda: False)
    assert distributed.tpu_cluster() is None
    assert distributed.initialize(distributed.DistributedConfig()) is False and clean_env == []
    monkeypatch.setattr(distributed, "_has_tpu_chips", lambda: True)
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")  # what JAX sets where libtpu finds no chips
    assert distributed.tpu_cluster() is None


def test_a_vm_with_chips_whose_metadata_has_no_worker_list_starts_nothing(monkeypatch, clean_env):
    monkeypatch.setattr(distributed, "_has_tpu_chips", lambda: True)
    server = Metadata({})  # answers 404 for every attribute: not a TPU VM slice
    monkeypatch.setenv("GCE_METADATA_IP", server.address)
    assert distributed.gce_metadata("worker-network-endpoints", timeout_s=1, tries=1) is None
    assert distributed.tpu_cluster() is None
    assert distributed.initialize(distributed.DistributedConfig()) is False and clean_env == []
    server.shutdown()
    server.server_close()


def test_chips_and_no_metadata_server_is_a_clear_error_not_a_guess(monkeypatch, clean_env):
    """Guessing one host would run each host of a slice as its own job; the error names the way out."""
    import socket

    monkeypatch.setattr(distributed, "_has_tpu_chips", lambda: True)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{s.getsockname()[1]}")
    with pytest.raises(ValueError, match="metadata server did not answer.*TPU_SKIP_MDS_QUERY=1"):
        distributed.tpu_cluster()
    assert clean_env == []
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")
    assert distributed.initialize(distributed.DistributedConfig()) is False


def test_chips_are_counted_as_jax_counts_them_and_need_libtpu(monkeypatch):
    import importlib.util

    from synpro_jax import tpu_chips

    monkeypatch.setattr(tpu_chips, "count", lambda *a: 4)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "libtpu" else real(name, *a))
    assert distributed._has_tpu_chips()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    assert not distributed._has_tpu_chips()  # chips without libtpu: JAX would not use them either


def test_explicit_flags_win_over_the_tpu_environment(monkeypatch, clean_env):
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "a,b")
    cfg = distributed.DistributedConfig(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1)
    assert distributed.initialize(cfg) is True
    assert clean_env == [(("127.0.0.1:1234",), {"num_processes": 2, "process_id": 1, "local_device_ids": None})]


def test_tpu_chips_are_google_pci_devices_with_a_tpu_id_not_its_network_card(tmp_path):
    from synpro_jax import tpu_chips

    def device(name, vendor, device_id):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text(vendor + "\n")
        (tmp_path / name / "device").write_text(device_id + "\n")

    device("0000:00:04.0", "0x1ae0", "0x0042")  # gVNIC, on every GCE VM
    device("0000:00:05.0", "0x8086", "0x0063")  # another vendor's device with a TPU-like id
    assert tpu_chips.count(str(tmp_path)) == 0
    for i in range(4):  # a v5e host's 4 chips
        device(f"0000:00:1{i}.0", "0x1ae0", "0x0063")
    assert tpu_chips.count(str(tmp_path)) == 4
