"""A simulated GCE metadata server: real HTTP on 127.0.0.1, answering as a Cloud TPU VM's does.

``GET /computeMetadata/v1/instance/attributes/<name>`` needs the ``Metadata-Flavor: Google``
request header (else 403, as GCE answers) and carries it in the response; an attribute the node
lacks is 404. Serves ``accelerator-type``, ``agent-worker-number``, ``worker-network-endpoints``
and ``tpu-env``, derived from the scenario's chips unless its ``[tpu.metadata]`` table says
otherwise. ``delay_s`` makes every answer slow (the collector's 1 s timeout), ``absent`` drops
attributes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/computeMetadata/v1/instance/attributes/"
#: Chip → (accelerator-type prefix, TensorCores counted per chip in the type's size, runtime).
_TYPES = {
    "v2": ("v2", 2, "tpu-ubuntu2204-base"),
    "v3": ("v3", 2, "tpu-ubuntu2204-base"),
    "v4": ("v4", 2, "tpu-ubuntu2204-base"),
    "v5e": ("v5litepod", 1, "v2-alpha-tpuv5-lite"),
    "v5p": ("v5p", 2, "v2-alpha-tpuv5"),
    "v6e": ("v6e", 1, "v2-alpha-tpuv6e"),
    "7x": ("tpu7x", 2, "v2-alpha-tpu7x"),
}


def node_attributes(
    chip: str,
    chips: int,
    *,
    accelerator_type: str | None = None,
    worker_number: int = 0,
    workers: int = 1,
    runtime_version: str | None = None,
) -> dict[str, str]:
    """The four attributes a TPU VM's metadata server holds for this node."""
    prefix, per_chip, runtime = _TYPES[chip]
    kind = accelerator_type or f"{prefix}-{chips * per_chip * workers}"
    version = runtime_version or runtime
    endpoints = ",".join(f"sim-uid-{w}:{w}:10.130.0.{2 + w}" for w in range(workers))
    env = (
        f"ACCELERATOR_TYPE: '{kind}'\n"
        f"RUNTIME_VERSION: '{version}'\n"
        f"WORKER_ID: '{worker_number}'\n"
        "ZONE: 'sim-zone-a'\n"
    )
    return {
        "accelerator-type": kind,
        "agent-worker-number": str(worker_number),
        "worker-network-endpoints": endpoints,
        "tpu-env": env,
    }


class SimulatedMetadataServer:
    """The server, started at construction on 127.0.0.1 (port 0: any free one)."""

    def __init__(
        self,
        attributes: Mapping[str, str],
        *,
        port: int = 0,
        delay_s: float = 0.0,
        absent: Iterable[str] = (),
    ) -> None:
        self.attributes = {k: v for k, v in attributes.items() if k not in set(absent)}
        self.delay_s = delay_s
        #: (path, Metadata-Flavor header) of every request, for tests.
        self.requests: list[tuple[str, str | None]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="sim-gce-metadata", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL the collector takes (``ACCELWATCH_TPU_METADATA_URL``)."""
        return f"http://127.0.0.1:{self._httpd.server_port}/computeMetadata/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                flavor = self.headers.get("Metadata-Flavor")
                server.requests.append((self.path, flavor))
                if server.delay_s:
                    time.sleep(server.delay_s)
                if flavor != "Google":
                    self._reply(403, "Missing Metadata-Flavor:Google header.\n")
                    return
                name = self.path.partition("?")[0].removeprefix(PREFIX)
                value = server.attributes.get(name) if self.path.startswith(PREFIX) else None
                if value is None:
                    self._reply(404, "not found\n")
                    return
                self._reply(200, value)

            def _reply(self, code: int, text: str) -> None:
                body = text.encode()
                try:
                    self.send_response(code)
                    self.send_header("Metadata-Flavor", "Google")
                    self.send_header("Content-Type", "application/text")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (its timeout): nothing to answer
                    pass

            def log_message(self, *args: Any) -> None:  # the simulator stays quiet
                pass

        return Handler

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
