"""The files the fabric source reads, for ``accelwatch capture`` (and nothing else)."""

from __future__ import annotations

import os
from collections.abc import Iterator

#: (kind, path relative to the sys root): kind ``file`` is copied, ``link`` re-created, ``dir``
#: made empty (a marker the reader tests for).
Entry = tuple[str, str]

_PORT_FILES = ("state", "phys_state", "rate", "link_layer", "gid_attrs/ndevs/0")
_DEVICE_FILES = ("fw_ver", "hca_type", "board_id")
_COUNTER_DIRS = ("counters", "counters_ext", "hw_counters")


def capture_entries(sys_root: str) -> Iterator[Entry]:
    base = os.path.join("class", "infiniband")
    for device in _listdir(os.path.join(sys_root, base)):
        ddir = os.path.join(base, device)
        for name in _DEVICE_FILES:
            yield "file", os.path.join(ddir, name)
        for port in _listdir(os.path.join(sys_root, ddir, "ports")):
            pdir = os.path.join(ddir, "ports", port)
            for name in _PORT_FILES:
                yield "file", os.path.join(pdir, name)
            for sub in _COUNTER_DIRS:
                for name in _listdir(os.path.join(sys_root, pdir, sub)):
                    yield "file", os.path.join(pdir, sub, name)
    net = os.path.join("class", "net")
    for nic in _listdir(os.path.join(sys_root, net)):
        ndir = os.path.join(net, nic)
        yield "file", os.path.join(ndir, "speed")
        yield "file", os.path.join(ndir, "operstate")
        yield "file", os.path.join(ndir, "bonding", "slaves")
        for entry in _listdir(os.path.join(sys_root, ndir)):
            if entry.startswith("lower_") or entry == "master":
                yield "link", os.path.join(ndir, entry)
            elif entry == "device":
                yield "dir", os.path.join(ndir, entry)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []
