"""InfiniBand / RoCE ports under ``<sys_root>/class/infiniband``: found once, read each tick.

Discovery decides, per port, which files exist and parse (``counters_ext`` 64-bit data
counters preferred over the 32-bit ``counters`` ones; ``hw_counters`` where the driver has
them); a file that is missing or reads ``N/A (no PMA)`` is simply absent from then on. Each
tick reads every kept file exactly once. Discovery runs again when the set of devices changes
or a kept file vanishes (a port or a device went away).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from agent.catalog.fabric import ENTITY_PREFIX, ERROR_COUNTERS, HW_COUNTERS
from agent.model import BatchBuilder
from collectors.fabric.counters import WRAP_32, Cumulative
from collectors.fabric.parse import (
    PHYS_LINK_UP,
    STATE_ACTIVE,
    parse_int,
    parse_numbered,
    parse_rate,
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
    """A kept counter file: where, which metric, its scale and its running total."""

    path: str
    metric: str
    scale: int
    counter: Cumulative
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
    last_ts: float | None = None


def _counter_file(path: str, metric: str, scale: int, wraps: bool, unit: int | None) -> CounterFile:
    return CounterFile(path, metric, scale, Cumulative(WRAP_32 if wraps else None), unit)


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


#: Parsed ``state`` / ``phys_state`` / ``rate`` contents: a handful of distinct strings.
_PARSED: dict[bytes, float | int | None] = {}


def sample_port(b: BatchBuilder, port: Port, now: float, device_max: dict[str, float]) -> bool:
    """Add one tick of ``port`` to ``b``; False if a kept file vanished (rediscover).

    The per-counter loop is the source's hot path (a few hundred files a tick on a big node),
    so it reads with bare ``os`` calls and skips the counter arithmetic when a value is unchanged.
    An individual error counter is recorded once it is nonzero; their sum always.
    """
    entity, pdir, add = port.entity, port.directory, b.add
    ok = True
    state_raw = read_bytes(pdir + "/state")
    phys_raw = read_bytes(pdir + "/phys_state")
    rate_raw = read_bytes(pdir + "/rate")
    parsed = _PARSED
    state = parsed.get(state_raw) if state_raw is not None else None
    if state is None and state_raw is not None:
        state = parsed[state_raw] = parse_numbered(state_raw)
    phys = parsed.get(phys_raw) if phys_raw is not None else None
    if phys is None and phys_raw is not None:
        phys = parsed[phys_raw] = parse_numbered(phys_raw)
    rate = parsed.get(rate_raw) if rate_raw is not None else None
    if rate is None and rate_raw is not None:
        rate = parsed[rate_raw] = parse_rate(rate_raw)
    if state_raw is None and phys_raw is None:
        ok = False
    add(entity, "host.ib.state", state)
    add(entity, "host.ib.phys_state", phys)
    if state is not None and phys is not None:
        add(entity, "host.ib.up", 1 if state == STATE_ACTIVE and phys == PHYS_LINK_UP else 0)
    if rate is not None and rate > 0:
        add(entity, "host.ib.rate", rate)
        if state == STATE_ACTIVE:
            port.max_rate = max(port.max_rate, rate)
            key = f"{port.device}:{port.attrs.get('link_layer', '')}"
            device_max[key] = max(device_max.get(key, 0.0), rate)
    dt = None if port.last_ts is None else max(now - port.last_ts, 1e-3)
    port.last_ts = now
    errors = 0
    any_error = False
    open_, read_, close_, rdonly = os.open, os.read, os.close, os.O_RDONLY
    for cf in port.counters:
        try:
            fd = open_(cf.path, rdonly)
            try:
                data = read_(fd, 64)
            finally:
                close_(fd)
            raw = int(data)
        except OSError:
            ok = False
            continue
        except ValueError:
            continue  # N/A now: absent this tick
        counter = cf.counter
        if raw != counter.raw:
            max_step = None
            if cf.per_second_units is not None and dt is not None and port.max_rate > 0:
                max_step = 2.0 * port.max_rate * dt / cf.per_second_units
            counter.advance(raw, max_step)
        if cf.error:
            total = counter.total
            errors += total
            any_error = True
            if not total:
                continue
            add(entity, cf.metric, total)
        else:
            add(entity, cf.metric, counter.total * cf.scale)
    if any_error:
        add(entity, "host.ib.errors", errors)
    return ok


def rate_max(port: Port, device_max: dict[str, float]) -> float | None:
    """The highest rate seen on the port or on its device's ports of the same link layer."""
    best = max(
        port.max_rate, device_max.get(f"{port.device}:{port.attrs.get('link_layer', '')}", 0)
    )
    return best or None


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
