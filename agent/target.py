"""The watched process: resolve a PID, read only the allow-listed environment keys."""

from __future__ import annotations

import os

import psutil

from agent.errors import TargetError

#: The only environment keys of the target that are ever stored (``runs.env``): the ones that
#: say which job, step, rank and node this is. An explicit list, no prefixes or patterns, so a
#: credential (``SLURM_JWT``, ``TPU_*_TOKEN``...) can never match by accident. README "Run
#: metadata" and docs/promises.md list the same keys (a test checks they agree).
ENV_KEYS = frozenset(
    {
        # torch.distributed / torchrun rank layout
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "NODE_RANK",
        "CUDA_VISIBLE_DEVICES",
        "MASTER_ADDR",
        "MASTER_PORT",
        # Slurm job, step, task and node identity
        "SLURM_JOB_ID",
        "SLURM_JOB_NAME",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_STEP_ID",
        "SLURM_PROCID",
        "SLURM_LOCALID",
        "SLURM_NODEID",
        "SLURM_NTASKS",
        "SLURM_NNODES",
        "SLURM_JOB_NODELIST",
        "SLURM_NODELIST",
        "SLURMD_NODENAME",
        "SLURM_CLUSTER_NAME",
        # TPU worker identity and topology
        "TPU_WORKER_ID",
        "TPU_WORKER_HOSTNAMES",
        "TPU_ACCELERATOR_TYPE",
        "TPU_PROCESS_BOUNDS",
        "TPU_CHIPS_PER_PROCESS_BOUNDS",
        "TPU_VISIBLE_CHIPS",
        "CLOUD_TPU_TASK_ID",
        "MEGASCALE_SLICE_ID",
        "MEGASCALE_NUM_SLICES",
        # Kubernetes pod identity (HOSTNAME is the pod's name; the rest from the downward API
        # under their usual names, or an Indexed Job's index)
        "HOSTNAME",
        "POD_NAME",
        "POD_NAMESPACE",
        "NODE_NAME",
        "JOB_COMPLETION_INDEX",
    }
)


def allowed_env(environ: dict[str, str]) -> dict[str, str]:
    """Only the keys of :data:`ENV_KEYS`; every other key never leaves /proc."""
    return {k: v for k, v in environ.items() if k in ENV_KEYS}


def resolve_target(pid: int) -> psutil.Process:
    """The process to attach to, or a one-line :class:`TargetError`."""
    if pid <= 0:
        raise TargetError(f"invalid pid {pid}")
    try:
        proc = psutil.Process(pid)
        proc.cpu_times()
        if proc.status() == psutil.STATUS_ZOMBIE:
            raise TargetError(f"process {pid} has already exited (zombie)")
    except psutil.NoSuchProcess:
        raise TargetError(f"no process with pid {pid}") from None
    except psutil.AccessDenied:
        raise TargetError(f"cannot read process {pid}: permission denied") from None
    if os.geteuid() != 0:
        try:
            uids = proc.uids()
        except psutil.Error:
            uids = None
        if uids is not None and os.geteuid() not in (uids.real, uids.effective):
            raise TargetError(
                f"process {pid} belongs to another user (uid {uids.real}); accelwatch only "
                "watches your own processes"
            )
    return proc


def target_env(proc: psutil.Process) -> dict[str, str]:
    """The allow-listed environment of ``proc`` ({} when it cannot be read)."""
    try:
        return allowed_env(proc.environ())
    except (psutil.Error, OSError):
        return {}


def target_cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def target_cwd(proc: psutil.Process) -> str:
    try:
        return proc.cwd()
    except psutil.Error:
        return ""
