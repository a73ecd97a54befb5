"""Which mounts the job uses: ``<proc>/<pid>/mountinfo`` and the paths of its open files and cwd.

Parsers are pure functions over file contents (``proc(5)``: ``36 35 98:0 /mnt1 /mnt2 rw,noatime
master:1 - ext3 /dev/root rw``); paths escape space, tab, newline and backslash as octal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

#: Filesystems that hold no data the job waits on (kernel interfaces, pseudo terminals).
PSEUDO = frozenset(
    {
        "proc", "sysfs", "devpts", "devtmpfs", "cgroup", "cgroup2", "mqueue", "debugfs",
        "tracefs", "securityfs", "pstore", "bpf", "hugetlbfs", "configfs", "fusectl", "autofs",
        "binfmt_misc", "nsfs", "efivarfs", "rpc_pipefs", "selinuxfs", "ramfs",
    }
)  # fmt: skip
#: FUSE object-store clients, by fstype suffix or mount source.
OBJECT_STORE = ("s3fs", "gcsfuse", "mountpoint-s3", "goofys", "rclone", "blobfuse", "blobfuse2")
LOCAL = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "jfs", "vfat", "exfat"})

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(path: str) -> str:
    """``/mnt/my\\040data`` → ``/mnt/my data``."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), path) if "\\" in path else path


@dataclass(frozen=True)
class Mount:
    mount_id: int
    majmin: str
    mountpoint: str
    fstype: str
    source: str

    @property
    def kind(self) -> str:
        return classify(self.fstype, self.source)


def classify(fstype: str, source: str = "") -> str:
    """``nfs`` / ``lustre`` / ``gpfs`` / ``object-store`` / ``local`` / ``memory`` / ``overlay`` /
    ``pseudo`` / ``other``: what kind of storage the job waits on there."""
    if fstype in ("nfs", "nfs4"):
        return "nfs"
    if fstype in ("lustre", "gpfs"):
        return fstype
    if fstype.startswith("fuse"):
        sub = fstype.partition(".")[2]
        if sub in OBJECT_STORE or any(source.startswith(c) for c in OBJECT_STORE):
            return "object-store"
        return "fuse"
    if fstype in LOCAL:
        return "local"
    if fstype == "tmpfs":
        return "memory"
    if fstype == "overlay":
        return "overlay"
    if fstype in PSEUDO:
        return "pseudo"
    return "other"


def parse_mountinfo(text: str) -> list[Mount]:
    """Every mount of a ``mountinfo`` file, in its order (later mounts shadow earlier ones)."""
    out: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
            out.append(
                Mount(
                    mount_id=int(fields[0]),
                    majmin=fields[2],
                    mountpoint=unescape(fields[4]),
                    fstype=fields[sep + 1],
                    source=unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
                )
            )
        except (ValueError, IndexError):
            continue
    return out


class MountTable:
    """Path → the mount holding it (the longest mount point that prefixes it; later wins)."""

    def __init__(self, mounts: Iterable[Mount]) -> None:
        self.by_point: dict[str, Mount] = {}
        for m in mounts:
            self.by_point[m.mountpoint] = m  # a later mount on the same point shadows
        self._points = sorted(self.by_point, key=len, reverse=True)

    def find(self, path: str) -> Mount | None:
        for point in self._points:
            if path == point or point == "/" or path.startswith(point + "/"):
                return self.by_point[point]
        return None


_NOT_ON_A_MOUNT = ("/dev/", "/memfd:", "/dmabuf:")


def open_paths(proc_root: str, pid: int) -> Iterator[tuple[int, str]]:
    """(fd, absolute path) of ``pid``'s open files, and (fd, ``""``) for each pipe and socket
    (their traffic is in the process's ``rchar``/``wchar`` too); no anonymous inodes or device
    nodes (``/dev``, except ``/dev/shm``), no memory-backed files (``/memfd:``, ``/dmabuf:``:
    not on any mount, though the link reads like a path on ``/``)."""
    fd_dir = os.path.join(proc_root, str(pid), "fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return
    fd_dir += "/"  # joined by hand: posixpath.join costs more than the readlink, per fd
    for name in names:
        try:
            target = os.readlink(fd_dir + name)
        except OSError:
            continue
        fd = int(name) if name.isdigit() else -1
        if target.startswith("/") and (
            not target.startswith(_NOT_ON_A_MOUNT) or target.startswith("/dev/shm/")
        ):
            yield fd, target.removesuffix(" (deleted)")
        elif target.startswith(("pipe:", "socket:")):
            yield fd, ""


def cwd_of(proc_root: str, pid: int) -> str | None:
    try:
        target = os.readlink(os.path.join(proc_root, str(pid), "cwd"))
    except OSError:
        return None
    return target if target.startswith("/") else None
