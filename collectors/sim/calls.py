"""Counting the calls a process makes into the simulated driver, per C symbol.

A benchmark's "the same calls on both sides" is only true if it is checked where the calls
land: at the driver, after nvidia-ml-py's wrappers (some of which call a symbol twice, once
for the size and once for the data). :func:`count_calls` wraps every symbol of an installed
simulated driver in a counting callback of the same C signature.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from typing import Any

import pynvml

from collectors.sim.driver import SimulatedNvml


def count_calls(sim: SimulatedNvml, symbols: list[str] | None = None) -> Counter[str]:
    """Wrap ``symbols`` (default: all) of ``sim``'s driver; the returned counter is live.

    Call before the code under test binds its function pointers: nvidia-ml-py's pointer
    cache is cleared here, so every later lookup finds the counting wrapper.
    """
    calls: Counter[str] = Counter()
    driver = sim.driver
    names = [n for n in (symbols or list(driver._symbols)) if "#" not in n]
    for name in names:
        original = getattr(driver, name, None)
        if original is None:
            continue
        wrapper = ctypes.CFUNCTYPE(original.restype, *original.argtypes)(
            _counted(calls, name, original)
        )
        driver._symbols[name + "#counted"] = wrapper  # keep the callback alive
        setattr(driver, name, wrapper)
    with pynvml.libLoadLock:
        pynvml._nvmlGetFunctionPointer_cache.clear()
    return calls


def _counted(calls: Counter[str], name: str, original: Any) -> Any:
    def counted(*args: Any) -> Any:
        calls[name] += 1
        return original(*args)

    return counted
