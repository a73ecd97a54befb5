"""Resource attributes that identify a run in any backend: service, host, run, rank, job, pod.

Precedence, lowest to highest: the SDK's defaults, what accelwatch detects, then the user's
``OTEL_RESOURCE_ATTRIBUTES`` / ``OTEL_SERVICE_NAME`` (the SDK's own detector reads those).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from opentelemetry.sdk.resources import OTELResourceDetector, Resource

from agent import __version__
from agent.model import RunInfo

#: Target environment key → resource attribute (the rank layout of a distributed job).
RANK_KEYS = {
    "RANK": "accelwatch.rank",
    "LOCAL_RANK": "accelwatch.local_rank",
    "WORLD_SIZE": "accelwatch.world_size",
    "NODE_RANK": "accelwatch.node_rank",
    "SLURM_JOB_ID": "slurm.job.id",
    "SLURM_PROCID": "slurm.proc.id",
}
#: Agent environment keys set by the Kubernetes downward API, first match wins.
K8S_KEYS = {
    "k8s.pod.name": ("K8S_POD_NAME", "POD_NAME"),
    "k8s.namespace.name": ("K8S_NAMESPACE", "K8S_NAMESPACE_NAME", "POD_NAMESPACE"),
    "k8s.pod.uid": ("K8S_POD_UID", "POD_UID"),
    "k8s.node.name": ("K8S_NODE_NAME", "NODE_NAME"),
}
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def run_attributes(
    run: RunInfo,
    environ: Mapping[str, str] | None = None,
    service_account: Path = SERVICE_ACCOUNT,
) -> dict[str, str | int]:
    """What accelwatch knows about the run: host, run id/name, rank, SLURM job, Kubernetes pod."""
    environ = os.environ if environ is None else environ
    attrs: dict[str, str | int] = {
        "service.name": "accelwatch",
        "service.version": __version__,
        "host.name": run.host,
        "accelwatch.run.id": run.run_id,
        "accelwatch.run.name": run.name,
    }
    if run.pid is not None:
        attrs["accelwatch.target.pid"] = run.pid
    for key, attribute in RANK_KEYS.items():
        value = run.env.get(key) or environ.get(key)
        if value:
            attrs[attribute] = int(value) if value.isdigit() else value
    attrs.update(_kubernetes(environ, service_account))
    if run.simulated:
        attrs["accelwatch.simulated"] = run.scenario or "true"
    return attrs


def _kubernetes(environ: Mapping[str, str], service_account: Path) -> dict[str, str]:
    if "KUBERNETES_SERVICE_HOST" not in environ:
        return {}
    out: dict[str, str] = {}
    for attribute, keys in K8S_KEYS.items():
        value = next((environ[k] for k in keys if environ.get(k)), None)
        if value:
            out[attribute] = value
    if "k8s.pod.name" not in out and environ.get("HOSTNAME"):
        out["k8s.pod.name"] = environ["HOSTNAME"]  # a pod's hostname is its name by default
    if "k8s.namespace.name" not in out:
        with contextlib.suppress(OSError):
            out["k8s.namespace.name"] = (service_account / "namespace").read_text().strip()
    return out


def build_resource(run: RunInfo, environ: Mapping[str, str] | None = None) -> Resource:
    """The run's resource; the user's ``OTEL_RESOURCE_ATTRIBUTES``/``OTEL_SERVICE_NAME`` win."""
    return Resource.create(run_attributes(run, environ)).merge(OTELResourceDetector().detect())
