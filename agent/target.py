"""The watched process: resolve a PID, read only whitelisted environment keys."""

from __future__ import annotations

import os
import re

import psutil

from agent.errors import TargetError

#: Exact environment keys of the target that may be stored; anything else never leaves /proc.
ENV_KEYS = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "NODE_RANK",
        "CUDA_VISIBLE_DEVICES",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
)
#: Prefixes of keys that may be stored (SLURM job layout, TPU topology).
ENV_PREFIXES = ("SLURM_", "TPU_")
_SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH)", re.IGNORECASE)


def whitelist_env(environ: dict[str, str]) -> dict[str, str]:
    """Keep only the whitelisted keys (and never one whose name looks like a secret)."""
    return {
        k: v
        for k, v in environ.items()
        if (k in ENV_KEYS or k.startswith(ENV_PREFIXES)) and not _SECRETISH.search(k)
    }


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
    """Whitelisted environment of ``proc`` ({} when it cannot be read)."""
    try:
        return whitelist_env(proc.environ())
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
