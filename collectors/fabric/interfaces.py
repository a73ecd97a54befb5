"""Network interfaces under ``<sys_root>/class/net``: line rate and state, and what they sit on.

The ``host`` source counts each interface's bytes (psutil); this source adds ``speed`` and
``operstate`` so utilization against line rate is known, and describes bonding and VLAN
parents (the ``lower_*`` links, ``bonding/slaves``, the ``master`` link) where sysfs shows them.
An IPoIB interface (``type`` 32, ARPHRD_INFINIBAND) is described as ``ipoib``: its traffic is
also in its InfiniBand port's counters, against the same line rate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent.catalog.fabric import INTERFACE_PREFIX
from collectors.fabric.ports import read_bytes

#: Interfaces that carry no fabric traffic.
SKIPPED = ("lo",)
#: ``type`` of an IP-over-InfiniBand interface (ARPHRD_INFINIBAND, include/uapi/linux/if_arp.h).
ARPHRD_INFINIBAND = b"32"


@dataclass
class Interface:
    entity: str
    directory: str
    attrs: dict[str, str]


def describe_interface(base: str, name: str) -> Interface:
    """An interface's kind (physical, bond, vlan, virtual) and its parents, as sysfs links show."""
    ndir = os.path.join(base, name)
    attrs: dict[str, str] = {"interface": name}
    try:
        entries = os.listdir(ndir)
    except OSError:
        entries = []
    lowers = sorted(e[len("lower_") :] for e in entries if e.startswith("lower_"))
    slaves = read_bytes(os.path.join(ndir, "bonding", "slaves"))
    arphrd = read_bytes(os.path.join(ndir, "type"))
    if slaves is not None:
        attrs["kind"] = "bond"
        lowers = sorted(set(lowers) | set(slaves.decode().split()))
    elif arphrd is not None and arphrd.strip() == ARPHRD_INFINIBAND:
        attrs["kind"] = "ipoib"
    elif lowers and "." in name:
        attrs["kind"] = "vlan"
    elif "device" in entries:
        attrs["kind"] = "physical"
    else:
        attrs["kind"] = "virtual"
    if lowers:
        attrs["parents"] = ",".join(lowers)
    master = os.path.join(ndir, "master")
    if os.path.islink(master):
        attrs["master"] = os.path.basename(os.readlink(master))
    return Interface(f"{INTERFACE_PREFIX}{name}", ndir, attrs)


def list_interfaces(base: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(base) if n not in SKIPPED)
    except OSError:
        return []
