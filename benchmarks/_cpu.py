"""CPU of another process at nanosecond resolution, for the benchmarks' windows.

``psutil.Process.cpu_times()`` and ``/proc/PID/task/TID/stat`` count in clock ticks (10 ms):
over a 10 s window that is 0.1 % of a core, about 7 % of the agent, too coarse for a +10 %
target. The kernel keeps the exact figure: the process's CPU-time clock
(``clock_getcpuclockid(pid)`` + ``clock_gettime``: every thread, including threads that have
already exited) and each live thread's ``/proc/PID/task/TID/schedstat`` (its first field is
nanoseconds on a CPU). Both are read here; ``psutil`` stays the cross-check.
"""

from __future__ import annotations

import ctypes
import os
import time

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.clock_getcpuclockid.argtypes = (ctypes.c_int, ctypes.POINTER(ctypes.c_int))
_LIBC.clock_getcpuclockid.restype = ctypes.c_int
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_clock(pid: int) -> int:
    """The clock id of ``pid``'s process CPU-time clock (all its threads, user + system)."""
    clock = ctypes.c_int()
    err = _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock))
    if err:
        raise OSError(err, f"clock_getcpuclockid({pid}): {os.strerror(err)}")
    return clock.value


def process_cpu_ns(clock: int) -> int:
    """Nanoseconds of CPU the process behind ``clock`` (from :func:`cpu_clock`) has used;
    OSError once it is gone (EINVAL: no such process)."""
    return time.clock_gettime_ns(clock)


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """Nanoseconds on a CPU of each live thread of ``pid`` (``schedstat``), summed by kernel
    thread name: the agent names its threads (``aw-sampler``, ``aw-store`` ...); its main
    thread is ``main``; unnamed ones (DuckDB's, OpenBLAS's, a baseline's) are ``other``."""
    out: dict[str, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", "rb") as f:
                name = f.read().strip().decode(errors="replace")
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                on_cpu = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
        if int(tid) == pid:
            name = "main"
        elif not name.startswith("aw-"):
            name = "other"
        out[name] = out.get(name, 0) + on_cpu
    return out
