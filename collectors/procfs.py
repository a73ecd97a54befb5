"""Pure parsers of the procfs files the process collector reads, and a cheap file read.

Parsers take the bytes of one file and return plain tuples (no objects per tick); tests feed
them captured or hand-written contents. :func:`read` is ``os.open`` + ``os.read``: about half
the cost of ``open().read()``, which matters at a thousand processes per tick.
"""

from __future__ import annotations

import contextlib
import operator
import os

#: ``/proc/PID/stat`` state letters (proc(5)) → the names :data:`STATE_CODES` of the catalog uses.
STATE_NAMES = {
    "R": "running",
    "S": "sleeping",
    "D": "disk-sleep",
    "Z": "zombie",
    "T": "stopped",
    "t": "tracing-stop",
    "X": "dead",
    "x": "dead",
    "K": "wake-kill",
    "W": "waking",
    "P": "parked",
    "I": "idle",
}

_CHUNK = 8192


def read(path: str) -> bytes:
    """A one-record procfs file (``stat``, ``status``, ``io``): its first read is all of it.

    OSError when the process is gone. Files with many records (``children``, ``cmdline``)
    can stop a read short of their end: use :func:`read_all` for them.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, _CHUNK)
        if len(data) < _CHUNK:
            return data
        return data + _rest(fd)
    finally:
        os.close(fd)


def read_all(path: str) -> bytes:
    """The whole file, read until EOF (a seq_file returns one page per read at most)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _rest(fd)
    finally:
        os.close(fd)


def _rest(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, _CHUNK):
        parts.append(chunk)
    return b"".join(parts)


def parse_stat(data: bytes) -> tuple[str, int, int, int, int, int]:
    """``(state, ppid, utime, stime, num_threads, starttime)`` of a stat file.

    utime/stime/starttime are clock ticks (proc(5) fields 3, 4, 14, 15, 20, 22). The command
    name may hold spaces and parentheses: fields are counted from the last ``)``.
    """
    f = data[data.rindex(b")") + 2 :].split(None, 20)
    return chr(f[0][0]), int(f[1]), int(f[11]), int(f[12]), int(f[17]), int(f[19])


def stat_comm(data: bytes) -> str:
    """The command name (``comm``, at most 15 characters) between the parentheses."""
    return data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")


def parse_memory(status: bytes) -> tuple[float, float]:
    """``(rss, vms)`` bytes of a status file (``VmRSS``, ``VmSize``; 0 for a zombie or a kernel
    thread). Not ``stat``'s rss field: that one is the kernel's approximate per-CPU sum."""
    return _kib(status, b"\nVmRSS:"), _kib(status, b"\nVmSize:")


def _kib(status: bytes, key: bytes) -> float:
    at = status.find(key)
    if at < 0:
        return 0.0
    try:
        return float(status[at + len(key) : status.index(b"kB", at)]) * 1024.0
    except ValueError:
        return 0.0


def parse_ctx_switches(status: bytes) -> tuple[int, int] | None:
    """``(voluntary, nonvoluntary)`` context switches of a status file (None if absent)."""
    at = status.rfind(b"\nvoluntary_ctxt_switches:")
    if at < 0:
        return None
    tail = status[at:].split()
    try:
        return int(tail[1]), int(tail[3])
    except (IndexError, ValueError):
        return None


def parse_io(data: bytes) -> tuple[int, int] | None:
    """``(read_bytes, write_bytes)`` of an io file: bytes that reached storage (None if absent)."""
    data = b"\n" + data  # every key starts a line (and ``cancelled_write_bytes`` is another)
    read_at, write_at = data.find(b"\nread_bytes:"), data.find(b"\nwrite_bytes:")
    if read_at < 0 or write_at < 0:
        return None
    try:
        return int(data[read_at + 12 : data.index(b"\n", read_at + 1)]), int(
            data[write_at + 13 : data.index(b"\n", write_at + 1)]
        )
    except ValueError:
        return None


def parse_cmdline(data: bytes) -> list[str]:
    """Arguments of a cmdline file: NUL-separated, or one space-separated string when the
    process rewrote its title (setproctitle), as ``ps`` shows it."""
    text = data.decode(errors="replace")
    if text.endswith("\0"):
        return text[:-1].split("\0")
    if "\0" in text:
        return text.split("\0")
    return text.split() if text else []


def parse_children(data: bytes) -> list[int]:
    """Pids of a ``task/TID/children`` file (space-separated)."""
    return [int(p) for p in data.split()]


def boot_time(proc_root: str) -> float:
    """Seconds since the epoch when the machine booted (``btime`` of ``/proc/stat``)."""
    for line in read(f"{proc_root}/stat").splitlines():
        if line.startswith(b"btime "):
            return float(line.split()[1])
    raise OSError(f"no btime in {proc_root}/stat")


def process_name(comm: str, cmdline: list[str]) -> str:
    """``comm``, completed from the command line when the kernel cut it at 15 characters."""
    if len(comm) >= 15 and cmdline:
        exe = os.path.basename(cmdline[0])
        if exe.startswith(comm):
            return exe
    return comm


def pread_from_start(fd: int, chunk: int, *, records: bool) -> bytes:
    """A kept-open file read again from offset 0: one read when it is short, else on to EOF.
    ``records``: a many-record file, read on until EOF even after a short read (the kernel may
    stop a read at a page boundary)."""
    data = os.pread(fd, chunk, 0)
    if (len(data) < chunk and not records) or not data:
        return data
    parts, at = [data], len(data)
    while more := os.pread(fd, chunk, at):
        parts.append(more)
        at += len(more)
    return b"".join(parts)


class KeptFile:
    """A procfs file opened once and read again at offset 0 (``pread``): the kernel generates
    its contents afresh on each read from 0, so a tick costs one read instead of an open, a
    read and a close. ``records``: a file of many records (``net/dev``, ``diskstats``) whose
    reads the kernel may stop at a page, read until EOF; a one-record file (``stat``,
    ``meminfo``) is whole in one short read. ``keep=False`` (an injected root, whose files a
    test or a capture may replace) reads by path each time. A failed read of the kept file
    (it was closed or went stale) opens it by path again, once."""

    __slots__ = ("path", "keep", "records", "fd")

    def __init__(self, path: str, *, keep: bool, records: bool = False) -> None:
        self.path = path
        self.keep = keep
        self.records = records
        self.fd: int | None = None

    def read(self) -> bytes:
        """The file's contents; OSError when it cannot be read."""
        if not self.keep:
            return read_all(self.path) if self.records else _read_whole(self.path)
        fd = self.fd
        if fd is not None:
            try:
                return self._pread(fd)
            except OSError:
                self.close()
        fd = self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self._pread(fd)

    def _pread(self, fd: int) -> bytes:
        return pread_from_start(fd, _KEPT_CHUNK, records=self.records)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


_KEPT_CHUNK = 1 << 16


def _read_whole(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _KEPT_CHUNK)
        return data if len(data) < _KEPT_CHUNK else data + _rest(fd)
    finally:
        os.close(fd)


class Unwrapped:
    """psutil's ``nowrap`` rule (``psutil._common._WrapNumbers``) for counters read straight
    from procfs, so they are psutil's values: a counter that went down (it wrapped, or its
    device was reset) adds the value it had to every later reading of it; a key seen for the
    first time, or again after it vanished, starts from its raw values; an empty reading
    changes nothing. ``run`` takes and gives {key: tuple of counters}; ``lines``: how many
    devices the file listed, those left out (loopback, loop devices) included, since psutil
    keeps them and a reading of only those is not an empty one to it."""

    __slots__ = ("_last", "_offsets")

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, ...]] | None = None
        self._offsets: dict[str, list[int]] = {}

    def run(
        self, raw: dict[str, tuple[int, ...]], lines: int | None = None
    ) -> dict[str, tuple[int, ...]]:
        if not (len(raw) if lines is None else lines):
            return raw
        last, self._last = self._last, raw
        if last is None:
            return raw
        offsets_of = self._offsets
        if offsets_of:
            for gone in offsets_of.keys() - raw.keys():
                del offsets_of[gone]
        out: dict[str, tuple[int, ...]] = {}
        for key, values in raw.items():
            before = last.get(key)
            if before is None:
                out[key] = values
                continue
            offsets = offsets_of.get(key)
            if offsets is None:
                if not any(map(operator.lt, values, before)):
                    out[key] = values
                    continue
                offsets = offsets_of[key] = [0] * len(values)
            for i, (now, then) in enumerate(zip(values, before)):
                if now < then:
                    offsets[i] += then
            out[key] = tuple(map(operator.add, values, offsets))
        return out
