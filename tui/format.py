"""Text for numbers: every metric is formatted by its catalog unit, never by a local table."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from agent.catalog import CATALOG

_BLOCKS = " ▁▂▃▄▅▆▇█"
_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(value: float) -> str:
    """``61.0 GiB``: IEC units, three significant digits."""
    step = 0
    while abs(value) >= 1024 and step < len(_IEC) - 1:
        value /= 1024
        step += 1
    if step == 0:
        return f"{value:.0f} B"
    return f"{value:.{0 if abs(value) >= 100 else 1}f} {_IEC[step]}"


def human_rate(value: float) -> str:
    """Bytes per second in SI units (as links and disks are sold): ``3.0 GB/s``."""
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.{0 if abs(scaled) >= 100 else 1}f} {unit}"
    return f"{value:.0f} B/s"


def format_unit(unit: str, value: float | None, *, per_second: bool = False) -> str:
    """Format ``value`` given a UCUM unit from the catalog; ``per_second`` for counter rates."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if per_second or unit == "By/s":
        return human_rate(value) if unit in ("By", "By/s") else f"{value:.1f}/s"
    if unit == "1":
        return f"{value * 100:.0f}%"
    if unit == "By":
        return human_bytes(value)
    if unit == "Cel":
        return f"{value:.0f}°C"
    if unit in ("W", "MHz", "J"):
        return f"{value:.0f} {unit}"
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:g}"


def fmt(metric: str, value: float | None, *, per_second: bool = False) -> str:
    """Format a value of catalog metric ``metric``."""
    entry = CATALOG.get(metric)
    return format_unit(entry.unit if entry else "", value, per_second=per_second)


def unit_label(metric: str) -> str:
    """The unit a chart of ``metric`` is drawn in (counters are shown as rates)."""
    entry = CATALOG[metric]
    if entry.unit == "1":
        return "%"
    if entry.is_counter:
        return "B/s" if entry.unit == "By" else f"{entry.unit}/s"
    return {"By": "bytes", "By/s": "B/s", "Cel": "°C"}.get(entry.unit, entry.unit)


def bar(fraction: float | None, width: int) -> str:
    """A horizontal bar of ``width`` cells with eighth-cell resolution."""
    if width <= 0:
        return ""
    if fraction is None or math.isnan(fraction):
        return "·" * width
    eighths = round(min(max(fraction, 0.0), 1.0) * width * 8)
    full, rest = divmod(eighths, 8)
    partial = "▏▎▍▌▋▊▉"[rest - 1] if rest else ""
    return ("█" * full + partial).ljust(width, "·")


def spark(values: Sequence[float] | np.ndarray, width: int, *, top: float | None = None) -> str:
    """A one-line sparkline of the last ``width`` buckets (max per bucket), right-aligned.

    Vectorised down to the text: every card draws two or three of these on every tick."""
    if width <= 0:
        return ""
    if not len(values):
        return " " * width
    array = np.fmax(np.asarray(values, dtype=np.float64), 0.0)  # NaN and negatives draw as 0
    n = len(array)
    if n > width:  # bucket: keep the peak of each bucket so short spikes stay visible
        array = np.maximum.reduceat(array, _bucket_edges(n, width))
    ceiling = top if top is not None else max(float(array.max()), 1e-12)
    if ceiling <= 0:
        levels = np.zeros(len(array), dtype=np.uint8)
    else:
        levels = np.rint(np.minimum(array / ceiling, 1.0) * 8).astype(np.uint8)
    return _LEVEL_CODES[levels].tobytes().decode("utf-32-le").rjust(width)


#: Level ``0``-``8`` → its block's code point (a text in one decode, no per-cell join).
_LEVEL_CODES = np.frombuffer(_BLOCKS.encode("utf-32-le"), dtype=np.uint32)


@functools.lru_cache(maxsize=256)
def _bucket_edges(n: int, width: int) -> np.ndarray:
    """Where each of ``width`` buckets of ``n`` values starts (the same few pairs every tick)."""
    return np.array([round(i * n / width) for i in range(width)], dtype=np.intp)


def duration(seconds: float) -> str:
    """``1:02:03`` or ``02:03``."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
