"""Give back the start-up pages of the agent's libraries once a recording has settled.

DuckDB's library is ~50 MB of machine code and ~14 MB of read-only data. Opening the store
(``connect`` registers every function, type and setting DuckDB has) and the first writes fault
in ~30 MB of the code and ~7 MB of the data, most of which a recording never reads again; so
do numpy's import (~7 MB of its extension modules and OpenBLAS) and, less, libpython's compiler
and importer, libstdc++ and libc. Those pages are clean and file-backed: the kernel may drop
them under memory pressure at any time and read them back from the file on the next touch.
Until then they count in the agent's RSS (and, for DuckDB's and numpy's, which nothing else
maps, in its USS).

:func:`release_library_text` asks the kernel (``madvise(MADV_DONTNEED)``) to unmap them now,
once DuckDB's library is loaded, from every shared library's mappings that the process can
never have written: code (``r-xp``) and read-only data (``r--p``: symbol tables, ``.rodata``,
the unwind tables exceptions read). Only a mapping whose ``/proc/self/smaps`` entry shows
nothing but clean file pages is touched: no dirty, anonymous (copy-on-write) or swapped page.
That keeps out RELRO (``r--p`` too, but relocated by the loader: its pages are anonymous
copies, and dropping them would lose the relocations), a debugger's breakpoint in the code,
writable mappings, libraries replaced on disk and every other file. The pages stay in the page
cache; what a recording keeps running faults back in from there (no disk read unless the
kernel evicted them meanwhile). It frees no memory the system could not reclaim anyway: it
makes the agent's resident set show what it uses. For a library other processes map too
(libc, libpython) only RSS changes: USS never counted those pages and PSS hardly moves. Where
``/proc/self/smaps`` or ``madvise`` is missing (not Linux), nothing happens and a debug line
says so.

``MADV_COLD`` would leave the pages mapped (RSS unchanged) and ``MADV_PAGEOUT`` would evict
them from the page cache too (a disk read to get them back; it skips the pages of a file the
process may not write): neither fits. A re-fault maps the touched page's neighbourhood too
(fault-around), so what stays released is the start-up-only share: of DuckDB's, ~10 of ~30 MB
of code and ~5 of ~7 MB of data on a recording whose live analysis has not run its rules, less
once it has (``docs/benchmarks.md``).
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
#: And again this often: what a rare statement faulted back in (a checkpoint, the hourly move
#: into spans, a live-analysis pass with DuckDB's optimizer and aggregates) leaves again, while
#: what every flush runs is back within its next flush. Each release costs ~1 ms of CPU and the
#: re-faults a few ms more: nothing at this interval.
RELEASE_EVERY_S = 300.0
#: The library's mappings a process never writes: code and read-only data. Each is released only
#: when smaps shows it holds clean file pages alone (RELRO is ``r--p`` but anonymous: kept).
RELEASED_PERMS = ("r-xp", "r--p")
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
    """The library's code and read-only data mappings that hold only clean file pages, and
    why others are not."""
    chosen: list[Mapping] = []
    skipped: list[str] = []
    for m in mappings:
        if m.path != library or m.perms not in RELEASED_PERMS:
            continue  # writable, another file, or a deleted one: never touched
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


def shared_libraries(mappings: list[Mapping]) -> list[str]:
    """Every shared library mapped here (``*.so*``), never one replaced on disk: each one's
    loading and the imports that use it run code and read data a recording never touches again
    (numpy's ~100 modules, libpython's compiler and importer, libstdc++'s locale set-up)."""
    return sorted(
        {
            m.path
            for m in mappings
            if m.path.startswith("/")
            and ".so" in os.path.basename(m.path)
            and not m.path.endswith(" (deleted)")
        }
    )


def release_library_text(
    library: str | None = None, smaps_path: str = "/proc/self/smaps"
) -> Released | None:
    """Drop the resident pages of ``library``'s code and read-only data mappings from this
    process (default: every shared library's, once DuckDB's is loaded); None, with a debug
    line, where that cannot be done here."""
    duckdb = library or duckdb_library()
    if duckdb is None:
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
    libraries = [library] if library else shared_libraries(mappings)
    chosen: list[Mapping] = []
    skipped: list[str] = []
    for lib in libraries:
        lib_chosen, lib_skipped = releasable(mappings, lib)
        chosen += lib_chosen
        skipped += lib_skipped
    done: list[Mapping] = []
    for m in chosen:
        if madvise(m.start, m.end - m.start, MADV_DONTNEED) == 0:
            done.append(m)
        else:
            skipped.append(f"{m.start:x}-{m.end:x}: madvise: {os.strerror(ctypes.get_errno())}")
    for reason in skipped:
        log.debug("resident: kept %s", reason)
    resident = sum(m.rss_kb for m in mappings if m.path in libraries and m.perms in RELEASED_PERMS)
    result = Released(resident, tuple(done), tuple(skipped))
    log.debug(
        "resident: released %d of %d kB of code and read-only data of %d libraries (%s, ...)",
        result.released_kb,
        resident,
        len(libraries),
        duckdb,
    )
    return result


class _Releases(threading.Timer):
    """A timer that runs its function after ``interval`` and then every ``every`` seconds
    (never, when ``every`` is None) until ``cancel()``."""

    def __init__(self, interval: float, every: float | None) -> None:
        super().__init__(interval, _release_quietly)
        self.every = every

    def run(self) -> None:
        wait = self.interval
        while not self.finished.wait(wait):
            self.function()
            if self.every is None:
                break
            wait = self.every
        self.finished.set()


def release_later(delay_s: float | None = None, every_s: float | None = None) -> threading.Timer:
    """Release the libraries' start-up pages ``delay_s`` (default :data:`RELEASE_AFTER_S`) from
    now and then every ``every_s`` seconds (default: once), on a daemon thread of its own (never
    the sampler's); ``cancel()`` it when the recording ends."""
    timer = _Releases(RELEASE_AFTER_S if delay_s is None else delay_s, every_s)
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
