"""Who a process is in a distributed job: rank, local rank, world size, node, Slurm, Kubernetes.

A pure function of the allow-listed environment (:data:`agent.target.ENV_KEYS`), so the
recording agent (per rank, from each sender's environment), ``merge`` (from ``runs.env``) and
tests all derive it the same way. torchrun's variables win over Slurm's when both are set
(torchrun under ``srun`` renumbers the ranks it starts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: identity field → environment keys, first set one wins.
_INT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "rank": ("RANK", "SLURM_PROCID"),
    "local_rank": ("LOCAL_RANK", "SLURM_LOCALID"),
    "world_size": ("WORLD_SIZE", "SLURM_NTASKS"),
    "local_world_size": ("LOCAL_WORLD_SIZE",),
    "node_rank": ("NODE_RANK", "GROUP_RANK", "SLURM_NODEID"),
    "nodes": ("SLURM_NNODES",),
}
_TEXT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "node": ("SLURMD_NODENAME", "NODE_NAME"),
    "slurm_job_id": ("SLURM_JOB_ID",),
    "slurm_step_id": ("SLURM_STEP_ID",),
    "slurm_array_job_id": ("SLURM_ARRAY_JOB_ID",),
    "slurm_array_task_id": ("SLURM_ARRAY_TASK_ID",),
    "slurm_procid": ("SLURM_PROCID",),
    "slurm_localid": ("SLURM_LOCALID",),
    "slurm_nodeid": ("SLURM_NODEID",),
    "slurm_cluster": ("SLURM_CLUSTER_NAME",),
    "k8s_pod": ("POD_NAME",),
    "k8s_namespace": ("POD_NAMESPACE",),
    "k8s_node": ("NODE_NAME",),
    "k8s_job_index": ("JOB_COMPLETION_INDEX",),
}
#: The fields :func:`identity` may return, in order.
FIELDS = (*_INT_FIELDS, *_TEXT_FIELDS)


def _first(env: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = env.get(key)
        if value is not None and value.strip() != "":
            return value.strip()
    return None


def identity(env: Mapping[str, str]) -> dict[str, Any]:
    """The job identity in ``env``: ints for ranks and sizes, text for ids; absent keys are None.

    ``node`` is the node's name when the scheduler names it; with Kubernetes the pod name
    (``POD_NAME``, from the downward API) stands in for a host name the pod does not share.
    """
    out: dict[str, Any] = {}
    for name, keys in _INT_FIELDS.items():
        text = _first(env, keys)
        try:
            out[name] = None if text is None else int(text)
        except ValueError:
            out[name] = None
    for name, keys in _TEXT_FIELDS.items():
        out[name] = _first(env, keys)
    if out["node"] is None:
        out["node"] = _first(env, ("POD_NAME", "HOSTNAME"))
    return out
