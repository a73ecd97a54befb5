"""InfiniBand / RoCE ports under ``<sys_root>/class/infiniband``: found once, read each tick.

Discovery decides, per port, which files exist and parse (``counters_ext`` 64-bit data
counters preferred over the 32-bit ``counters`` ones; ``hw_counters`` where the driver has
them); a file that is missing or reads ``N/A (no PMA)`` is simply absent from then on. Each
tick reads every kept file exactly once (the counters through
:class:`~collectors.fabric.table.CounterTable`). Discovery runs again when the set of devices changes
or a kept file vanishes (a port or a device went away).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from agent.catalog.fabric import ENTITY_PREFIX, ERROR_COUNTERS, HW_COUNTERS
from collectors.fabric.parse import (
    parse_int,
)

log = logging.getLogger(__name__)

#: (metric, counters/ file, counters_ext/ file, scale): data counters count 4-octet words.
TRAFFIC = (
    ("host.ib.rx_bytes", "port_rcv_data", "port_rcv_data_64", 4),
    ("host.ib.tx_bytes", "port_xmit_data", "port_xmit_data_64", 4),
    ("host.ib.rx_packets", "port_rcv_packets", "port_rcv_packets_64", 1),
    ("host.ib.tx_packets", "port_xmit_packets", "port_xmit_packets_64", 1),
)
#: Smallest packet, bounding how far a 32-bit packet counter can plausibly move in a tick.
_MIN_PACKET_BYTES = 64


def read_bytes(path: str) -> bytes | None:
    """The file's contents, or None if it cannot be read (one open, one read)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass(slots=True)
class CounterFile:
    """A kept counter file: where, which metric, its scale, whether it wraps at 2**32."""

    path: str
    metric: str
    scale: int
    wraps: bool = False
    #: Bytes per count bounding a plausible 32-bit wrap step (None: any decrease is a wrap).
    per_second_units: int | None = None
    error: bool = False


@dataclass(slots=True)
class Port:
    """One port's kept files and attributes, as discovery left them."""

    entity: str
    device: str
    directory: str
    attrs: dict[str, str]
    counters: list[CounterFile] = field(default_factory=list)
    max_rate: float = 0.0


def _counter_file(path: str, metric: str, scale: int, wraps: bool, unit: int | None) -> CounterFile:
    return CounterFile(path, metric, scale, wraps, unit)


def discover_port(device_dir: str, device: str, port: str) -> tuple[Port, list[str]]:
    """The port's kept files, and the names of the ones that were absent or unreadable."""
    pdir = os.path.join(device_dir, "ports", port)
    absent: list[str] = []
    attrs = {"device": device, "port": port}
    link_layer = read_bytes(os.path.join(pdir, "link_layer"))
    if link_layer:
        attrs["link_layer"] = link_layer.decode().strip()
    for name in ("fw_ver", "hca_type", "board_id"):
        value = read_bytes(os.path.join(device_dir, name))
        if value:
            attrs[name] = value.decode().strip()
    netdev = read_bytes(os.path.join(pdir, "gid_attrs", "ndevs", "0"))
    if netdev and netdev.strip():
        attrs["netdev"] = netdev.decode().strip()
    out = Port(f"{ENTITY_PREFIX}{device}/{port}", device, pdir, attrs)
    counters, ext = os.path.join(pdir, "counters"), os.path.join(pdir, "counters_ext")
    width = "64"
    for metric, name32, name64, scale in TRAFFIC:
        path64 = os.path.join(ext, name64)
        if _readable(path64):
            out.counters.append(_counter_file(path64, metric, scale, False, None))
            continue
        path32 = os.path.join(counters, name32)
        if _readable(path32):
            unit = 4 if scale == 4 else _MIN_PACKET_BYTES
            out.counters.append(_counter_file(path32, metric, scale, True, unit))
            width = "32" if scale == 4 else width
        else:
            absent.append(f"counters/{name32}")
    attrs["data_counters"] = width
    for name in (*ERROR_COUNTERS, "port_xmit_wait"):
        path = os.path.join(counters, name)
        if _readable(path):
            metric = "host.ib.xmit_wait" if name == "port_xmit_wait" else f"host.ib.{name}"
            cf = _counter_file(path, metric, 1, False, None)
            cf.error = name != "port_xmit_wait"
            out.counters.append(cf)
        else:
            absent.append(f"counters/{name}")
    hw = os.path.join(pdir, "hw_counters")
    if os.path.isdir(hw):
        for name, (metric, _, _) in HW_COUNTERS.items():
            path = os.path.join(hw, name)
            if _readable(path):
                out.counters.append(_counter_file(path, metric, 1, False, None))
    return out, absent


def _readable(path: str) -> bool:
    data = read_bytes(path)
    return data is not None and parse_int(data) is not None


def list_ports(base: str) -> Iterator[tuple[str, str, str]]:
    """(device dir, device, port) of every port under ``base``, sorted."""
    try:
        devices = sorted(os.listdir(base))
    except OSError:
        return
    for device in devices:
        ddir = os.path.join(base, device)
        try:
            ports = sorted(os.listdir(os.path.join(ddir, "ports")), key=_port_key)
        except OSError:
            continue
        for port in ports:
            yield ddir, device, port


def _port_key(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def rate_max(port: Port, best: dict[str, float]) -> float | None:
    """The highest rate the port itself reached while ACTIVE (``best``: per entity, kept when
    the port is rediscovered), or None before it was ever ACTIVE with a rate.

    Only the port's own history counts: a sibling port of the same HCA may be cabled at a lower
    rate on purpose (a split cable, a slower switch), so its faster sibling proves nothing. And
    sysfs has no honest "supported rate" (``rate`` shows the trained width and speed only;
    HDR100 runs 2X by design), so a port already downtrained when first seen is not called
    downtrained: ``rate.max`` starts at its first rate.
    """
    return best.get(port.entity) or None


def log_absent(base: str, absent: dict[str, list[str]]) -> None:
    """One debug line for everything discovery left out (never one per tick)."""
    if absent:
        names = sorted({n for files in absent.values() for n in files})
        log.debug(
            "fabric: %d port(s) under %s lack %s (absent, not collected)",
            len(absent),
            base,
            ", ".join(names),
        )
