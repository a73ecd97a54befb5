"""NVML getters with their arguments built once: the same driver call as nvidia-ml-py's wrapper.

Each wrapper of nvidia-ml-py makes a fresh result object, converts its enum arguments and
takes a ``byref`` on every call, and a structure's fields are read through its slow attribute
hook. About a dozen of them run per GPU and tick, so :class:`Getter` keeps the result object
and the argument tuple and :class:`StructGetter` reads a structure's fields with ``struct``.
The symbol is still looked up through nvidia-ml-py's (cached) pointer table on each call and its
return codes raise its exceptions, so the calls, values and errors are the wrapper's.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import pynvml

_OK = pynvml.NVML_SUCCESS


class Getter:
    """``function(handle, *inputs, &out)``; the call's answer is ``out.value``."""

    __slots__ = ("function", "args", "out")

    def __init__(self, function: str, handle: Any, *inputs: Any, out: Any = None) -> None:
        self.function = function
        self.out = ctypes.c_uint() if out is None else out
        self.args = (handle, *inputs, ctypes.byref(self.out))

    def __call__(self) -> Any:
        ret = pynvml._nvmlGetFunctionPointer(self.function)(*self.args)
        if ret != _OK:
            pynvml._nvmlCheckReturn(ret)
        return self.out.value


def layout(row_type: Any, names: tuple[str, ...], codes: str) -> struct.Struct:
    """A ``struct`` reading ``names`` (in their order in memory) of one ctypes structure."""
    fmt, at = "=", 0
    for name, code in zip(names, codes):
        offset = getattr(row_type, name).offset
        if offset < at:
            raise ValueError(f"{name} is not after the fields before it")
        fmt += "x" * (offset - at) + code
        at = offset + struct.calcsize("=" + code)
    return struct.Struct(fmt)


class StructGetter(Getter):
    """``function(handle, &out)`` into a kept structure; the answer is the tuple of
    ``fields`` (read with ``struct`` from its memory). Input fields such as a ``version`` are
    set once: the driver writes only the results."""

    __slots__ = ("fields", "view")

    def __init__(self, function: str, handle: Any, out: Any, fields: struct.Struct) -> None:
        super().__init__(function, handle, out=out)
        self.fields = fields
        self.view = memoryview(out).cast("B")

    def __call__(self) -> Any:
        ret = pynvml._nvmlGetFunctionPointer(self.function)(*self.args)
        if ret != _OK:
            pynvml._nvmlCheckReturn(ret)
        return self.fields.unpack_from(self.view)


UTILIZATION = layout(pynvml.c_nvmlUtilization_t, ("gpu", "memory"), "II")
#: (total, free, used) of either memory structure (v2's reserved bytes are not recorded).
MEMORY = layout(pynvml.c_nvmlMemory_t, ("total", "free", "used"), "QQQ")
MEMORY_V2 = layout(pynvml.c_nvmlMemory_v2_t, ("total", "free", "used"), "QQQ")


def utilization(handle: Any) -> StructGetter:
    return StructGetter(
        "nvmlDeviceGetUtilizationRates", handle, pynvml.c_nvmlUtilization_t(), UTILIZATION
    )


def memory(handle: Any, v2: bool) -> StructGetter:
    if not v2:
        return StructGetter("nvmlDeviceGetMemoryInfo", handle, pynvml.c_nvmlMemory_t(), MEMORY)
    out = pynvml.c_nvmlMemory_v2_t()
    out.version = pynvml.nvmlMemory_v2
    return StructGetter("nvmlDeviceGetMemoryInfo_v2", handle, out, MEMORY_V2)
