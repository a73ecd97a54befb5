"""Which job, rank and node a recorded run belongs to, from its stored (allow-listed) env.

The fields are the recording side's own reading of the environment
(:func:`agent.identity.identity`), so a merge and the agent agree on what a rank is; what this
adds is the *job key* that tells which runs are one job: the Slurm job (with its array task and
step), else the torchrun rendezvous (``MASTER_ADDR:MASTER_PORT`` and the world size).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.identity import identity


def job_key(env: Mapping[str, Any], ident: Mapping[str, Any]) -> str | None:
    """``slurm:4711_3.0`` / ``torch:host:29500/8``, or None when nothing names the job."""
    slurm = ident.get("slurm_job_id")
    if slurm:
        array = ident.get("slurm_array_task_id")
        step = ident.get("slurm_step_id")
        return f"slurm:{slurm}" + (f"_{array}" if array else "") + (f".{step}" if step else "")
    master = str(env.get("MASTER_ADDR") or "").strip()
    if master:
        port = str(env.get("MASTER_PORT") or "").strip()
        return f"torch:{master}:{port}/{ident.get('world_size') or ''}"
    return None


def run_identity(env: Mapping[str, Any], host: str = "") -> dict[str, Any]:
    """The run's identity (:func:`agent.identity.identity`'s fields; ``node`` falls back to the
    run's host) and its ``job`` key."""
    text_env = {str(k): str(v) for k, v in env.items() if v is not None}
    out = dict(identity(text_env))
    out["node"] = out.get("node") or host or None
    out["job"] = job_key(text_env, out)
    return out
