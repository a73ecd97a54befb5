"""Give back the start-up code of DuckDB's library once a recording has settled.

DuckDB's library is ~50 MB of machine code. Opening the store (``connect`` registers every
function, type and setting DuckDB has) and the first writes fault in ~35 MB of it, almost none
of which a recording runs again. Those pages are clean and file-backed: the kernel may drop them
under memory pressure at any time and read them back from the file on the next touch. Until
then they count in the agent's RSS (and USS: nothing else maps them).

:func:`release_library_text` asks the kernel (``madvise(MADV_DONTNEED)``) to unmap them now,
from the library's executable mappings only (``r-xp``: code, never written by the process).
The pages stay in the page cache; the code a recording keeps running faults back in from there
(no disk read unless the kernel evicted them meanwhile). It frees no memory the system could not
reclaim anyway: it makes the agent's resident set show what it uses. Never on a writable or
read-only data mapping (``r--p`` may hold relocated, copy-on-write pages; dropping those would
lose them), and never on a mapping that has any dirty or anonymous page (a debugger's
breakpoint): those are skipped. Where ``/proc/self/smaps`` or ``madvise`` is missing (not
Linux), nothing happens and a debug line says so.

``MADV_COLD`` would leave the pages mapped (RSS unchanged) and ``MADV_PAGEOUT`` would evict
them from the page cache too (a disk read to get them back; it skips the pages of a file the
process may not write): neither fits. A re-fault maps the touched page's neighbourhood too
(fault-around), so what stays released is the start-up-only share: ~12 of ~35 MB on a
recording whose live analysis has not run its rules, little once it has
(``docs/benchmarks.md``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from agent.app.os_process import name_os_threads

log = logging.getLogger(__name__)

#: ``madvise`` advice that drops the range's page-table entries (Linux ``MADV_DONTNEED``).
MADV_DONTNEED = 4
#: After this long the recording has connected, flushed and sampled a few times: what DuckDB
#: keeps running (inserts, commits, the live window's loads) is the little it faults back in.
RELEASE_AFTER_S = 15.0
#: The modules whose shared library is DuckDB (its Python package's extension module).
DUCKDB_MODULES = ("_duckdb", "duckdb.duckdb")
#: Set (to anything) to keep the pages: the other side of a benchmark's A/B, or a check that
#: a problem is not this.
KEEP_ENV = "ACCELWATCH_KEEP_CODE_RESIDENT"


@dataclass(frozen=True)
class Mapping:
    """One mapping of ``/proc/self/smaps``: its range, permissions, file and page counts."""

    start: int
    end: int
    perms: str
    path: str
    rss_kb: int = 0
    #: Pages that are not clean copies of the file: dirty, anonymous (copy-on-write), swapped.
    changed_kb: int = 0


@dataclass(frozen=True)
class Released:
    """What one release did: the resident code before, what was released, what was skipped."""

    resident_kb: int
    released: tuple[Mapping, ...]
    skipped: tuple[str, ...]

    @property
    def released_kb(self) -> int:
        return sum(m.rss_kb for m in self.released)


_CHANGED_FIELDS = ("Shared_Dirty", "Private_Dirty", "Anonymous", "Swap")


def parse_smaps(text: str) -> list[Mapping]:
    """The mappings of an ``smaps`` file (its header lines and the fields we read)."""
    mappings: list[Mapping] = []
    head: list[str] | None = None
    fields: dict[str, int] = {}

    def close() -> None:
        if head is None:
            return
        start, end = (int(x, 16) for x in head[0].split("-"))
        path = head[5] if len(head) > 5 else ""
        if len(head) > 6:  # "/path/lib.so (deleted)": replaced on disk, leave it alone
            path = " ".join(head[5:])
        changed = sum(fields.get(name, 0) for name in _CHANGED_FIELDS)
        mappings.append(Mapping(start, end, head[1], path, fields.get("Rss", 0), changed))

    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if "-" in parts[0] and not parts[0].endswith(":"):
            close()
            head, fields = parts, {}
        elif head is not None and len(parts) >= 2 and parts[0].endswith(":"):
            try:
                fields[parts[0][:-1]] = int(parts[1])
            except ValueError:
                continue
    close()
    return mappings


def releasable(mappings: list[Mapping], library: str) -> tuple[list[Mapping], list[str]]:
    """The library's code mappings that hold only clean file pages, and why others are not."""
    chosen: list[Mapping] = []
    skipped: list[str] = []
    for m in mappings:
        if m.path != library or m.perms != "r-xp":
            continue  # data, RELRO, writable, another file, or a deleted one: never touched
        if m.changed_kb:
            skipped.append(f"{m.start:x}-{m.end:x}: {m.changed_kb} kB not clean file pages")
        elif m.rss_kb:
            chosen.append(m)
    return chosen, skipped


def duckdb_library() -> str | None:
    """The path of the loaded DuckDB library, or None when it is not loaded."""
    for name in DUCKDB_MODULES:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and path.endswith(".so"):
            return os.path.realpath(path)
    return None


def _madvise() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def release_library_text(
    library: str | None = None, smaps_path: str = "/proc/self/smaps"
) -> Released | None:
    """Drop the resident pages of ``library``'s (default: DuckDB's) code mappings from this
    process; None, with a debug line, where that cannot be done here."""
    library = library or duckdb_library()
    if library is None:
        log.debug("resident: DuckDB's library is not loaded; nothing to release")
        return None
    try:
        with open(smaps_path) as f:
            mappings = parse_smaps(f.read())
    except OSError as exc:
        log.debug("resident: cannot read %s (%s); code pages kept", smaps_path, exc)
        return None
    try:
        madvise = _madvise()
    except (OSError, AttributeError) as exc:
        log.debug("resident: no madvise here (%s); code pages kept", exc)
        return None
    chosen, skipped = releasable(mappings, library)
    done: list[Mapping] = []
    for m in chosen:
        if madvise(m.start, m.end - m.start, MADV_DONTNEED) == 0:
            done.append(m)
        else:
            skipped.append(f"{m.start:x}-{m.end:x}: madvise: {os.strerror(ctypes.get_errno())}")
    for reason in skipped:
        log.debug("resident: kept %s", reason)
    resident = sum(m.rss_kb for m in mappings if m.path == library and m.perms == "r-xp")
    result = Released(resident, tuple(done), tuple(skipped))
    log.debug("resident: released %d of %d kB of %s's code", result.released_kb, resident, library)
    return result


def release_later(delay_s: float | None = None) -> threading.Timer:
    """Release DuckDB's start-up code once, ``delay_s`` (default :data:`RELEASE_AFTER_S`) from
    now, on a short-lived daemon thread (never the sampler's); ``cancel()`` it when the
    recording ends first."""
    timer = threading.Timer(RELEASE_AFTER_S if delay_s is None else delay_s, _release_quietly)
    timer.name = "accelwatch-resident"
    timer.daemon = True
    timer.start()
    name_os_threads()  # started after the session named its threads: ``aw-resident`` too
    return timer


def _release_quietly() -> None:
    if os.environ.get(KEEP_ENV):
        log.debug("resident: %s is set; code pages kept", KEEP_ENV)
        return
    try:
        release_library_text()
    except Exception as exc:  # an optimisation: it never fails the recording
        log.debug("resident: release failed (%s)", exc)
