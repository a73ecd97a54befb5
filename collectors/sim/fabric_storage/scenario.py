"""The ``[fabric]`` and ``[storage]`` tables of a scenario: ports, mounts, and how they behave.

```toml
sources = ["nvml", "fabric", "storage"]

[fabric]
ports = 4                 # mlx5_0/1 ... mlx5_3/1
ports_per_device = 1      # 2: dual-port HCAs, mlx5_0/1 mlx5_0/2 mlx5_1/1 ... (port index order)
link_layer = "InfiniBand" # or "Ethernet" (RoCE: hw_counters are written)
gbps = 200                # line rate of every port
rx_gbps = 80              # steady traffic per port and direction, Gb/s
tx_gbps = 80
nics = 0                  # eth0 ... plain Ethernet interfaces (no IB/RoCE port), each:
nic_gbps = 100            # line rate
nic_rx_gbps = 0           # steady traffic per interface and direction, Gb/s
nic_tx_gbps = 0
[[fabric.effects]]        # windows, as the GPU effects: start_s end_s every_s for_s set ramp
ports = [2]               # or "all" (the default)
start_s = 20
set = { gbps = 100, errors_per_s = 30 }

[[storage.mounts]]
path = "/mnt/data"
type = "nfs4"             # nfs nfs4 lustre gpfs xfs ext4 fuse.s3fs fuse.gcsfuse ...
read_mbps = 800           # MB/s the job reads there
latency_ms = 1.0          # time per operation (NFS execute time, Lustre / block await)
[[storage.effects]]
mounts = ["/mnt/data"]    # or "all"
start_s = 10
ramp = { latency_ms = 1.0 }   # per second, from the start of the window
set = { read_mbps = 100 }
```
Port signals: ``gbps``, ``rx_gbps``, ``tx_gbps``, ``errors_per_s`` (symbol errors and link
recoveries), ``cnp_per_s``, ``ecn_per_s``, ``xmit_wait_per_s``, ``down`` (1: state DOWN,
phys Disabled). Mount signals: ``read_mbps``, ``write_mbps``, ``ops_per_s`` (default: one op
per MiB moved), ``latency_ms``, ``rtt_ms`` (default 0.8 × latency), ``retrans_per_s``.
Every error is one line naming the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from collectors.sim.windows import since_window_opened

PORT_SIGNALS = {"gbps": 200.0, "rx_gbps": 0.0, "tx_gbps": 0.0, "errors_per_s": 0.0,
                "cnp_per_s": 0.0, "ecn_per_s": 0.0, "xmit_wait_per_s": 0.0, "down": 0.0}  # fmt: skip
MOUNT_SIGNALS = {"read_mbps": 0.0, "write_mbps": 0.0, "ops_per_s": -1.0, "latency_ms": 1.0,
                 "rtt_ms": -1.0, "retrans_per_s": 0.0}  # fmt: skip
MOUNT_TYPES = ("nfs", "nfs4", "lustre", "gpfs", "xfs", "ext4", "fuse.s3fs", "fuse.gcsfuse",
               "fuse.mountpoint-s3")  # fmt: skip


@dataclass(frozen=True)
class Effect:
    label: str
    targets: tuple[Any, ...] | None  # port indexes or mount paths; None: all
    start_s: float = 0.0
    end_s: float = math.inf
    every_s: float | None = None
    for_s: float | None = None
    set: dict[str, float] = field(default_factory=dict)
    ramp: dict[str, float] = field(default_factory=dict)

    def since(self, t: float) -> float | None:
        """Seconds since the current active window opened, or None when inactive."""
        return since_window_opened(t, self.start_s, self.end_s, self.every_s, self.for_s)


def levels(base: dict[str, float], effects: tuple[Effect, ...], target: Any, t: float):  # type: ignore[no-untyped-def]
    out = dict(base)
    for e in effects:
        if e.targets is not None and target not in e.targets:
            continue
        since = e.since(t)
        if since is None:
            continue
        out.update(e.set)
        for name, per_s in e.ramp.items():
            out[name] = out[name] + per_s * since
    return out


@dataclass(frozen=True)
class FabricPart:
    ports: int
    link_layer: str
    counters: str
    base: dict[str, float]
    effects: tuple[Effect, ...]
    nics: int = 0
    #: ``gbps``, ``rx_gbps``, ``tx_gbps`` of every plain Ethernet interface.
    nic: dict[str, float] = field(default_factory=dict)
    #: 2: dual-port HCAs (port index i is ``mlx5_<i // 2>/<i % 2 + 1>``).
    ports_per_device: int = 1


#: Keys of ``[fabric]`` for the plain Ethernet interfaces → the NIC signal they set.
NIC_KEYS = {"nic_gbps": ("gbps", 100.0), "nic_rx_gbps": ("rx_gbps", 0.0),
            "nic_tx_gbps": ("tx_gbps", 0.0)}  # fmt: skip


@dataclass(frozen=True)
class MountSpec:
    path: str
    type: str
    base: dict[str, float]


@dataclass(frozen=True)
class StoragePart:
    mounts: tuple[MountSpec, ...]
    effects: tuple[Effect, ...]


def _signals(raw: Any, known: dict[str, float], where: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown signal(s) {', '.join(unknown)} (known: "
                         f"{', '.join(known)})")  # fmt: skip
    out = {}
    for k, v in raw.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError(f"{where}: {k} must be a number")
        out[k] = float(v)
    return out


def _effects(raw: Any, known: dict[str, float], table: str, key: str) -> tuple[Effect, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"[[{table}.effects]] must be an array of tables")
    out = []
    for i, e in enumerate(raw):
        where = f"[[{table}.effects]] #{i + 1}"
        if not isinstance(e, dict):
            raise ValueError(f"{where} must be a table")
        extra = sorted(set(e) - {"label", key, "start_s", "end_s", "every_s", "for_s", "set",
                                 "ramp"})  # fmt: skip
        if extra:
            raise ValueError(f"{where}: unknown key(s) {', '.join(extra)}")
        targets = e.get(key, "all")
        if targets != "all" and not isinstance(targets, list):
            raise ValueError(f'{where}: {key} must be "all" or a list')
        if not e.get("set") and not e.get("ramp"):
            raise ValueError(f"{where}: needs set or ramp")
        out.append(
            Effect(
                str(e.get("label", f"effect {i + 1}")),
                None if targets == "all" else tuple(targets),
                float(e.get("start_s", 0.0)),
                float(e.get("end_s", math.inf)),
                float(e["every_s"]) if "every_s" in e else None,
                float(e["for_s"]) if "for_s" in e else None,
                _signals(e.get("set", {}), known, f"{where} set"),
                _signals(e.get("ramp", {}), known, f"{where} ramp"),
            )
        )
    return tuple(out)


def parse_fabric(raw: Any) -> FabricPart:
    if not isinstance(raw, dict):
        raise ValueError("[fabric] must be a table")
    extra = sorted(set(raw) - {"ports", "ports_per_device", "link_layer", "counters",
                               "effects", "nics", *NIC_KEYS, *PORT_SIGNALS})  # fmt: skip
    if extra:
        raise ValueError(f"[fabric]: unknown key(s) {', '.join(extra)}")
    nics = raw.get("nics", 0)
    if not isinstance(nics, int) or not 0 <= nics <= 16:
        raise ValueError("[fabric] nics must be an integer 0..16")
    ports = raw.get("ports", 0 if nics else 2)
    if not isinstance(ports, int) or not (0 if nics else 1) <= ports <= 64:
        raise ValueError("[fabric] ports must be an integer 1..64 (0 with nics)")
    per_device = raw.get("ports_per_device", 1)
    if per_device not in (1, 2) or isinstance(per_device, bool):
        raise ValueError("[fabric] ports_per_device must be 1 or 2")
    nic_raw = _signals({k: v for k, v in raw.items() if k in NIC_KEYS}, dict.fromkeys(NIC_KEYS,
                       0.0), "[fabric]")  # fmt: skip
    nic = {name: nic_raw.get(key, default) for key, (name, default) in NIC_KEYS.items()}
    layer = raw.get("link_layer", "InfiniBand")
    if layer not in ("InfiniBand", "Ethernet"):
        raise ValueError('[fabric] link_layer must be "InfiniBand" or "Ethernet"')
    counters = str(raw.get("counters", "64"))
    if counters not in ("64", "32"):
        raise ValueError('[fabric] counters must be "64" or "32"')
    signals = {k: v for k, v in raw.items() if k in PORT_SIGNALS}
    base = {**PORT_SIGNALS, **_signals(signals, PORT_SIGNALS, "[fabric]")}
    return FabricPart(ports, layer, counters, base,
                      _effects(raw.get("effects", []), PORT_SIGNALS, "fabric", "ports"),
                      nics, nic, per_device)  # fmt: skip


def parse_storage(raw: Any) -> StoragePart:
    if not isinstance(raw, dict):
        raise ValueError("[storage] must be a table")
    extra = sorted(set(raw) - {"mounts", "effects"})
    if extra:
        raise ValueError(f"[storage]: unknown key(s) {', '.join(extra)}")
    mounts = []
    for i, m in enumerate(raw.get("mounts", [])):
        where = f"[[storage.mounts]] #{i + 1}"
        if not isinstance(m, dict) or not str(m.get("path", "")).startswith("/"):
            raise ValueError(f"{where} needs an absolute path")
        if m.get("type") not in MOUNT_TYPES:
            raise ValueError(f"{where}: type must be one of {', '.join(MOUNT_TYPES)}")
        signals = {k: v for k, v in m.items() if k not in ("path", "type")}
        mounts.append(MountSpec(m["path"], m["type"],
                                {**MOUNT_SIGNALS, **_signals(signals, MOUNT_SIGNALS, where)}))  # fmt: skip
    if not mounts:
        raise ValueError("[storage] needs at least one [[storage.mounts]]")
    return StoragePart(tuple(mounts),
                       _effects(raw.get("effects", []), MOUNT_SIGNALS, "storage", "mounts"))  # fmt: skip
