"""The agent's view of processes through the kernel: its own threads' names, whether a pid
still runs, both without psutil (they run often, and psutil objects cost more than the read);
and its own allocator's arenas."""

from __future__ import annotations

import contextlib
import ctypes
import threading

#: glibc's ``mallopt`` parameter for the number of malloc arenas (``M_ARENA_MAX``).
_M_ARENA_MAX = -8
#: Arenas the agent's threads share. glibc gives each thread that allocates while another
#: holds the lock an arena of its own (up to 8 per core), each keeping its freed memory: the
#: agent's sampler, writer, analysis and DuckDB threads cost ~3 MB resident that way. Its
#: allocations are small and mostly under the GIL, so two arenas contend little.
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (``MALLOC_ARENA_MAX`` cannot be set once the process runs);
    call it before the agent starts its threads. False where there is no glibc ``mallopt``
    (musl, macOS): nothing changes there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


def name_os_threads() -> None:
    """Give the agent's threads their names in the kernel too (``accelwatch-sampler`` shows as
    ``aw-sampler`` in ``top -H``, ``ps -L`` and ``/proc/PID/task/*/comm``), so their CPU can
    be told apart from outside; Python before 3.14 leaves every thread named ``python``.
    Best effort: a thread that is gone or a kernel that refuses keeps its name."""
    for thread in threading.enumerate():
        tid = thread.native_id
        if tid is None or not thread.name.startswith("accelwatch-"):
            continue
        name = "aw-" + thread.name.removeprefix("accelwatch-")
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm", "w") as f:
            f.write(name[:15])


def pid_running(pid: int | None) -> bool:
    """The attached process exists and is no zombie: one read of its ``stat`` (``wait`` asks
    at each wake-up; building a ``psutil.Process`` each time cost more than the read)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"")
