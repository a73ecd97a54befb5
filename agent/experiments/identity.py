"""Which job, rank and node a recorded run belongs to, from its stored (allow-listed) env.

:func:`run_identity` is the one place ``merge`` asks; it uses ``agent.identity.identity(env)``
(the recording side's own reading of the environment) when that module exists, and reads the
same keys itself otherwise, so both agree on what a rank and a job are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: Keys of another identity() that name the job, in order of preference.
_JOB_KEYS = ("job", "job_id", "slurm_job_id", "k8s_job", "k8s_job_name", "k8s_job_uid")


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _first(env: Mapping[str, Any], *keys: str) -> str | None:
    for k in keys:
        v = env.get(k)
        if v not in (None, ""):
            return str(v)
    return None


def identity_from_env(env: Mapping[str, Any], host: str = "") -> dict[str, Any]:
    """rank, local_rank, world_size, node and job from torchrun / Slurm / TPU variables."""
    job = None
    slurm = _first(env, "SLURM_JOB_ID")
    if slurm is not None:
        array = _first(env, "SLURM_ARRAY_TASK_ID")
        step = _first(env, "SLURM_STEP_ID")
        job = f"slurm:{slurm}" + (f"_{array}" if array else "") + (f".{step}" if step else "")
    elif (master := _first(env, "MASTER_ADDR")) is not None:
        job = f"torch:{master}:{_first(env, 'MASTER_PORT') or ''}/{_first(env, 'WORLD_SIZE') or ''}"
    return {
        "rank": _int(_first(env, "RANK", "SLURM_PROCID", "TPU_WORKER_ID", "CLOUD_TPU_TASK_ID")),
        "local_rank": _int(_first(env, "LOCAL_RANK", "SLURM_LOCALID")),
        "world_size": _int(_first(env, "WORLD_SIZE", "SLURM_NTASKS")),
        "node": _first(env, "SLURMD_NODENAME") or host or None,
        "node_rank": _int(_first(env, "NODE_RANK", "GROUP_RANK", "SLURM_NODEID")),
        "job": job,
    }


def _recording_side() -> Callable[[Mapping[str, Any]], Mapping[str, Any]] | None:
    try:
        from agent.identity import identity  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return identity  # type: ignore[no-any-return,unused-ignore]


def run_identity(env: Mapping[str, Any], host: str = "") -> dict[str, Any]:
    """The run's identity: ``rank``, ``local_rank``, ``world_size``, ``node``, ``node_rank``,
    ``job`` (None where unknown)."""
    ours = identity_from_env(env, host)
    theirs = _recording_side()
    if theirs is None:
        return ours
    try:
        given = dict(theirs(env))
    except Exception:  # another module's reading must not stop a merge: ours stands
        return ours
    out = dict(ours)
    for key in ("rank", "local_rank", "world_size", "node_rank"):
        if _int(given.get(key)) is not None:
            out[key] = _int(given.get(key))
    if given.get("node"):
        out["node"] = str(given["node"])
    job = next((str(given[k]) for k in _JOB_KEYS if given.get(k)), None)
    if job is not None and ours["job"] is None:
        out["job"] = job
    return out
