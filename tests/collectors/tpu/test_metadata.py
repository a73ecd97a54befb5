"""Node metadata from a GCE-like metadata server on 127.0.0.1; outside GCP, one quick notice."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from collectors.sim.tpu.tree import write_tree
from collectors.tpu import metadata
from collectors.tpu.collector import TpuCollector
from collectors.tpu.discovery import CHIP_TYPES

ATTRS = {
    "accelerator-type": "v5litepod-8",
    "agent-worker-number": "1",
    "worker-network-endpoints": "uid0:0:10.130.0.5,uid1:1:10.130.0.6",
    "tpu-env": "ACCELERATOR_TYPE: 'v5litepod-8'\nRUNTIME_VERSION: 'v2-alpha-tpuv5-lite'\n",
}


def _serve(handler_cls):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/computeMetadata/v1"


class _Gce(BaseHTTPRequestHandler):
    flavor = "Google"
    delay = 0.0
    seen: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802
        type(self).seen.append((self.path, self.headers.get("Metadata-Flavor")))
        time.sleep(self.delay)
        key = self.path.rsplit("/", 1)[-1]
        if key not in ATTRS or self.headers.get("Metadata-Flavor") != "Google":
            self.send_error(404)
            return
        body = ATTRS[key].encode()
        self.send_response(200)
        if self.flavor:
            self.send_header("Metadata-Flavor", self.flavor)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def gce():
    made = []

    def make(**attrs):
        cls = type("Handler", (_Gce,), {"seen": [], **attrs})
        server, url = _serve(cls)
        made.append(server)
        return cls, url

    yield make
    for s in made:
        s.shutdown()
        s.server_close()


def test_a_tpu_vm_describes_its_type_worker_endpoints_and_runtime(gce):
    handler, url = gce()
    node = metadata.fetch(url)
    assert node.notice is None
    assert node.accelerator_type == "v5litepod-8" and node.worker_number == 1
    assert node.worker_endpoints == ["10.130.0.5", "10.130.0.6"]
    assert node.runtime_version == "v2-alpha-tpuv5-lite"
    assert all(flavor == "Google" for _, flavor in handler.seen)  # the header GCE requires
    assert node.attributes()["worker_endpoints"] == "10.130.0.5,10.130.0.6"


def test_a_server_that_is_not_gce_is_a_notice(gce):
    _, url = gce(flavor="")
    node = metadata.fetch(url)
    assert node.notice and "no GCE metadata server" in node.notice
    assert node.accelerator_type is None


def test_outside_gcp_metadata_is_one_quick_notice_and_no_retries():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    node = metadata.fetch(f"http://127.0.0.1:{port}/computeMetadata/v1")
    assert time.monotonic() - t0 < 0.5
    assert "no GCE metadata server" in node.notice


def test_a_hung_metadata_server_costs_one_timeout_not_one_per_attribute(gce):
    handler, url = gce(delay=3.0)
    t0 = time.monotonic()
    node = metadata.fetch(url, timeout=0.3)
    assert time.monotonic() - t0 < 1.0
    assert node.notice and len(handler.seen) == 1


def test_missing_attributes_are_absent_values(gce):
    _, url = gce()
    saved = ATTRS.pop("tpu-env")
    try:
        node = metadata.fetch(url)
    finally:
        ATTRS["tpu-env"] = saved
    assert node.notice is None and node.runtime_version is None
    assert node.accelerator_type == "v5litepod-8"


def test_the_collector_records_node_metadata_on_its_entities(gce, tmp_path):
    _, url = gce()
    write_tree(tmp_path, CHIP_TYPES["v5e"], 2)
    env = {
        "ACCELWATCH_TPU_SYS_ROOT": str(tmp_path / "sys"),
        "ACCELWATCH_TPU_DEV_ROOT": str(tmp_path / "dev"),
        "ACCELWATCH_TPU_METADATA_URL": url,
        "ACCELWATCH_TPU_RUNTIME": "127.0.0.1:1",  # nothing there: not up
    }
    from agent.source import CollectContext

    c = TpuCollector(env=env)
    c.start(CollectContext())
    batch = c.collect(time.time())
    c.close()
    assert batch.entity_attrs["tpu"]["accelerator_type"] == "v5litepod-8"
    assert batch.entity_attrs["tpu1"]["runtime_version"] == "v2-alpha-tpuv5-lite"


def test_the_collector_outside_gcp_leaves_one_notice(tmp_path):
    write_tree(tmp_path, CHIP_TYPES["v5e"], 1)
    env = {
        "ACCELWATCH_TPU_SYS_ROOT": str(tmp_path / "sys"),
        "ACCELWATCH_TPU_DEV_ROOT": str(tmp_path / "dev"),
        "ACCELWATCH_TPU_METADATA_URL": "http://127.0.0.1:1/computeMetadata/v1",
        "ACCELWATCH_TPU_RUNTIME": "127.0.0.1:1",
    }
    from agent.source import CollectContext

    c = TpuCollector(env=env)
    c.start(CollectContext())
    events = [e.kind for e in c.collect(time.time()).events]
    events += [e.kind for e in c.collect(time.time() + 1).events]
    c.close()
    assert events.count("tpu_metadata_unavailable") == 1


def test_node_state_goes_through_cloud_tpu_client_when_installed():
    class FakeClient:
        def __init__(self, tpu, zone, project):
            self.args = (tpu, zone, project)

        def state(self):
            return "READY"

        def health(self):
            return "HEALTHY"

    assert metadata.node_state("node-1", client_factory=FakeClient) == {
        "state": "READY",
        "health": "HEALTHY",
    }


def test_node_state_without_the_tpu_extra_or_the_api_is_a_notice():
    try:
        import cloud_tpu_client  # noqa: F401
    except ImportError:
        result = metadata.node_state("node-1")
        assert "cloud-tpu-client not installed" in result["notice"]
    else:  # installed (the `tpu` extra): the API is out of reach here, which is a notice too

        def refuse(**kw):
            raise RuntimeError("no credentials")

        result = metadata.node_state("node-1", client_factory=refuse)
        assert "Cloud TPU API unavailable" in result["notice"]
