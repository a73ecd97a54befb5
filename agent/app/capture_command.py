"""``accelwatch capture --out DIR``: the files the fabric and storage sources read, for replay.

The tree is ``DIR/sys`` and ``DIR/proc``; ``accelwatch run --sys-root DIR/sys --proc-root
DIR/proc -- CMD`` replays it (the captured processes stand in for the job). Only what those
sources read is written: no ``environ``, no ``cmdline``, no file contents, and mount options
that name a credential are masked. Dirs are 0700 and files 0600 from the first byte.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from agent.errors import TargetError, UsageError

#: Mount options whose value could be a secret (CIFS, FUSE object stores, Ceph): any option
#: whose name holds one of these words, ``aws_secret_access_key=``, ``access_key_id=``,
#: ``password=``, ``secretfile=`` alike (a mount option starts a field or follows a comma).
_SECRET_OPTION = re.compile(
    r"(?<![^\s,])([\w.-]*(?:pass|secret|token|key|cred|auth)[\w.-]*)=[^,\s]*",
    re.IGNORECASE,
)
#: procfs files whose text may carry mount options.
_MASKED = ("mountinfo", "mountstats")


def _mkdir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)


def _write(path: str, data: bytes) -> None:
    _mkdir(os.path.dirname(path))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _copy_file(src: str, dst: str) -> bool:
    try:
        with open(src, "rb") as f:
            data = f.read()
    except OSError:
        return False  # absent, unreadable, or N/A: the reader sees it absent too
    if os.path.basename(src) in _MASKED:
        text = _SECRET_OPTION.sub(lambda m: f"{m.group(1)}=***", data.decode(errors="replace"))
        data = text.encode()
    _write(dst, data)
    return True


def _copy_link(src: str, dst: str) -> bool:
    try:
        target = os.readlink(src)
    except OSError:
        return False
    _mkdir(os.path.dirname(dst))
    os.symlink(target, dst)
    return True


def _tree_pids(pid: int) -> list[int]:
    import psutil

    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        raise TargetError(f"no process {pid}") from None
    except psutil.AccessDenied:
        raise TargetError(f"process {pid}: permission denied") from None


def capture(out: str, sys_root: str, proc_root: str, pids: list[int]) -> dict[str, int]:
    """Write the tree under ``out``; counts of files and links written."""
    from collectors.fabric.capture import capture_entries as fabric_entries
    from collectors.storage.capture import capture_entries as storage_entries

    roots = {"sys": sys_root, "proc": proc_root}
    counts = {"files": 0, "links": 0}
    entries = [("sys", kind, path) for kind, path in fabric_entries(sys_root)]
    entries += list(storage_entries(proc_root, sys_root, pids))
    for root, kind, rel in entries:
        src, dst = os.path.join(roots[root], rel), os.path.join(out, root, rel)
        if kind == "file" and _copy_file(src, dst):
            counts["files"] += 1
        elif kind == "link" and _copy_link(src, dst):
            counts["links"] += 1
        elif kind == "dir":
            _mkdir(dst)
    manifest = {"format": 1, "captured": time.time(), "pids": pids, **counts}
    _write(os.path.join(out, "capture.json"), json.dumps(manifest, indent=2).encode())
    return counts


def cmd_capture(args: argparse.Namespace) -> int:
    out = os.path.abspath(args.out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f"--out {args.out}: exists and is not an empty directory")
    pids = _tree_pids(args.pid) if args.pid is not None else []
    if not pids:  # a replay of it has no job: its storage source finds no mounts
        print(
            "accelwatch: capture: no --pid given: only the fabric files are captured, no "
            "process's mounts, open files or I/O",
            file=sys.stderr,
        )
    old = os.umask(0o077)
    try:
        _mkdir(out)
        os.chmod(out, 0o700)
        counts = capture(out, args.sys_root, args.proc_root, pids)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    print(
        f"captured {counts['files']} files and {counts['links']} links "
        f"({len(pids)} process{'es' if len(pids) != 1 else ''}) to {out}\n"
        f"replay: accelwatch run --sys-root {out}/sys --proc-root {out}/proc -- CMD",
        file=sys.stdout,
    )
    return 0
