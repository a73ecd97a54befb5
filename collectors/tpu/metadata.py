"""What a Cloud TPU VM says about itself: the GCE metadata server, and optionally the TPU API.

As JAX does for its TPU cluster detection: one request per attribute with a 1 s timeout and no
retry loop, so start-up outside GCP costs at most one timeout (a refused or unresolvable host
fails at once) and leaves one notice. ``cloud_tpu_client`` (the ``tpu`` extra) is imported only
when node state is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BASE_URL = "http://metadata.google.internal/computeMetadata/v1"
ATTRIBUTES = ("accelerator-type", "agent-worker-number", "worker-network-endpoints", "tpu-env")
TIMEOUT_S = 1.0


@dataclass
class NodeMetadata:
    """The node's description, or why there is none (``notice``)."""

    accelerator_type: str | None = None
    worker_number: int | None = None
    worker_endpoints: list[str] = field(default_factory=list)
    tpu_env: dict[str, str] = field(default_factory=dict)
    notice: str | None = None

    @property
    def runtime_version(self) -> str | None:
        return self.tpu_env.get("RUNTIME_VERSION") or self.tpu_env.get("TPU_RUNTIME_VERSION")

    def attributes(self) -> dict[str, Any]:
        """Entity attributes for the store (only what is known)."""
        out: dict[str, Any] = {}
        if self.accelerator_type:
            out["accelerator_type"] = self.accelerator_type
        if self.worker_number is not None:
            out["worker_number"] = self.worker_number
        if self.worker_endpoints:
            out["worker_endpoints"] = ",".join(self.worker_endpoints)
        if self.runtime_version:
            out["runtime_version"] = self.runtime_version
        return out


def parse_tpu_env(text: str) -> dict[str, str]:
    """``tpu-env`` is YAML-ish ``KEY: 'value'`` lines; anything else is ignored."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip().strip("'\"")
    return out


def parse_endpoints(text: str) -> list[str]:
    """``worker-network-endpoints`` is ``uid:worker:ip,...``; we keep the addresses."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if parts and parts[-1]:
            out.append(parts[-1])
    return out


def _get(base_url: str, attribute: str, timeout: float) -> str | None:
    # Imported here: urllib.request pulls in http.client and ssl (OpenSSL, ~5 MB resident)
    # into every agent, while only a TPU VM ever asks its metadata server.
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"{base_url.rstrip('/')}/instance/attributes/{attribute}",
        headers={"Metadata-Flavor": "Google"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - fixed scheme
            if resp.headers.get("Metadata-Flavor") != "Google":
                raise urllib.error.URLError("not a GCE metadata server")
            return resp.read(1 << 16).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None  # attribute absent on this node
        raise


def fetch(base_url: str = DEFAULT_BASE_URL, *, timeout: float = TIMEOUT_S) -> NodeMetadata:
    """Read the TPU attributes; the first connection failure stops (one notice, no retries)."""
    values: dict[str, str] = {}
    for attribute in ATTRIBUTES:
        try:
            text = _get(base_url, attribute, timeout)
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused: not on GCP
            reason = getattr(exc, "reason", exc)
            return NodeMetadata(notice=f"no GCE metadata server at {base_url}: {reason}")
        if text is not None:
            values[attribute] = text.strip()
    worker = values.get("agent-worker-number", "")
    return NodeMetadata(
        accelerator_type=values.get("accelerator-type") or None,
        worker_number=int(worker) if worker.isdigit() else None,
        worker_endpoints=parse_endpoints(values.get("worker-network-endpoints", "")),
        tpu_env=parse_tpu_env(values.get("tpu-env", "")),
    )


def node_state(
    tpu_name: str,
    *,
    zone: str | None = None,
    project: str | None = None,
    client_factory: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """The Cloud TPU API's view of the node (state, health) through ``cloud_tpu_client``.

    Optional: without the ``tpu`` extra this returns a notice rather than raising.
    """
    if client_factory is None:
        try:
            from cloud_tpu_client import Client  # the optional `tpu` extra
        except ImportError as exc:
            return {
                "notice": f"cloud-tpu-client not installed ({exc}); pip install 'accelwatch[tpu]'"
            }
        client_factory = Client
    try:
        client = client_factory(tpu=tpu_name, zone=zone, project=project)
        return {"state": client.state(), "health": client.health()}
    except Exception as exc:  # the API is remote and optional: never fail the recording
        return {"notice": f"Cloud TPU API unavailable: {type(exc).__name__}: {exc}"}
