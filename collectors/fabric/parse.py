"""Pure parsers of the InfiniBand and network sysfs files: contents in, values (or None) out.

Formats (``Documentation/ABI/stable/sysfs-class-infiniband`` and ``sysfs-class-net``):
``state`` ``4: ACTIVE``, ``phys_state`` ``5: LinkUp``, ``rate`` ``200 Gb/sec (4X HDR)``,
``link_layer`` ``InfiniBand`` or ``Ethernet``, counters one integer each (or
``N/A (no PMA)`` when the device has no performance-management agent), net ``speed`` in Mb/s
(``-1`` or EINVAL while the link is down), ``operstate`` ``up`` / ``down`` / ``unknown``...
"""

from __future__ import annotations

#: Logical states (``state``) and the physical one that means the link trained.
STATE_ACTIVE = 4
PHYS_LINK_UP = 5


def parse_int(data: bytes | str) -> int | None:
    """A counter's value; None for ``N/A (no PMA)``, empty or otherwise unreadable contents."""
    try:
        value = int(data)
    except ValueError:
        return None
    return value if value >= 0 else None


def parse_numbered(data: bytes | str) -> int | None:
    """The number of a ``4: ACTIVE`` / ``5: LinkUp`` state line."""
    text = data.decode() if isinstance(data, bytes) else data
    head, sep, _ = text.partition(":")
    if not sep:
        return None
    try:
        return int(head)
    except ValueError:
        return None


def parse_rate(data: bytes | str) -> float | None:
    """``100 Gb/sec (4X EDR)`` → bytes per second (12.5e9); None if not a rate."""
    text = data.decode() if isinstance(data, bytes) else data
    parts = text.split()
    if len(parts) < 2 or not parts[1].startswith("Gb/s"):
        return None
    try:
        gbits = float(parts[0])
    except ValueError:
        return None
    return gbits * 1e9 / 8 if gbits >= 0 else None


def parse_speed(data: bytes | str) -> float | None:
    """A NIC's ``speed`` (Mb/s) → bytes per second; None while unknown (``-1``) or down."""
    try:
        mbits = int(data)
    except ValueError:
        return None
    return mbits * 1e6 / 8 if mbits > 0 else None


def parse_operstate(data: bytes | str) -> int | None:
    """1 for ``up``, 0 for ``down`` / ``lowerlayerdown`` / ``dormant``, None for ``unknown``."""
    text = (data.decode() if isinstance(data, bytes) else data).strip()
    if text == "up":
        return 1
    if text in ("down", "lowerlayerdown", "dormant", "notpresent", "testing"):
        return 0
    return None
