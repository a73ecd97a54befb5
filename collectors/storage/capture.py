"""The files the storage source reads, for ``accelwatch capture`` (and nothing else).

Per process: ``mountinfo``, ``mountstats``, ``io``, the ``fd`` and ``cwd`` links (their targets
only); never ``environ``, ``cmdline`` or file contents. Lustre ``llite.*.stats`` where
readable and every block device's ``dev`` and ``stat``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from collectors.storage.lustre import PROC_DIRS, SYS_DIRS

#: (root ``proc`` | ``sys``, kind ``file`` | ``link``, path relative to that root)
Entry = tuple[str, str, str]


def capture_entries(proc_root: str, sys_root: str, pids: Iterable[int]) -> Iterator[Entry]:
    for pid in pids:
        for name in ("mountinfo", "mountstats", "io"):
            yield "proc", "file", os.path.join(str(pid), name)
        yield "proc", "link", os.path.join(str(pid), "cwd")
        for fd in _listdir(os.path.join(proc_root, str(pid), "fd")):
            yield "proc", "link", os.path.join(str(pid), "fd", fd)
    for root, root_dir, dirs in (("proc", proc_root, PROC_DIRS), ("sys", sys_root, SYS_DIRS)):
        for parts in dirs:
            base = os.path.join(*parts)
            for inst in _listdir(os.path.join(root_dir, base)):
                yield root, "file", os.path.join(base, inst, "stats")
    for disk in _listdir(os.path.join(sys_root, "block")):
        ddir = os.path.join("block", disk)
        yield "sys", "file", os.path.join(ddir, "dev")
        yield "sys", "file", os.path.join(ddir, "stat")
        for part in _listdir(os.path.join(sys_root, ddir)):
            if part.startswith(disk):
                yield "sys", "file", os.path.join(ddir, part, "dev")
                yield "sys", "file", os.path.join(ddir, part, "stat")


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []
