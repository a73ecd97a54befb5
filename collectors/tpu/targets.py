"""Where libtpu's metrics service listens: ``--tpu-runtime HOST:PORT[,PORT...]``, else the
environment. Pure (no gRPC), so the command line validates the flag before the job starts."""

from __future__ import annotations

import os

DEFAULT_PORT = 8431
#: libtpu's own variable: the metrics ports of the TPU processes on this host.
PORTS_ENV = "TPU_RUNTIME_METRICS_PORTS"


class TargetSpecError(ValueError):
    """A ``HOST:PORT[,PORT...]`` runtime address is malformed."""


def parse_targets(spec: str | None = None, env: dict[str, str] | None = None) -> list[str]:
    """Runtime addresses from an override ``HOST:PORT[,PORT...]`` (or bare ports), else
    ``TPU_RUNTIME_METRICS_PORTS`` (ports on localhost), else ``localhost:8431``."""
    env = dict(os.environ) if env is None else env
    if spec and spec.strip():
        host, sep, ports = spec.strip().rpartition(":")
        if not sep:
            host, ports = "localhost", spec
        host = host.strip("[]") or "localhost"
        if "," in host or "/" in host or any(c.isspace() for c in host):
            raise TargetSpecError(f"{spec!r}: one host, then its ports (want HOST:PORT[,PORT...])")
        return [_target(host, p, spec) for p in ports.split(",")]
    ports = env.get(PORTS_ENV, "").strip()
    if ports:
        return [_target("localhost", p, PORTS_ENV) for p in ports.split(",")]
    return [f"localhost:{DEFAULT_PORT}"]


def _target(host: str, port: str, where: str) -> str:
    port = port.strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetSpecError(f"{where}: {port!r} is not a port (want HOST:PORT[,PORT...])")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
