"""Probe each NVML query once per device and keep only the ones that answer.

A GPU model either supports a query or it does not; asking again every tick only burns
CPU on exceptions. So at start every :class:`Query` is tried once per device: the first
variant that answers is kept as a bound ``(name, fetch, emit)`` triple for the hot path;
``NOT_SUPPORTED`` or a symbol the driver lacks (``FunctionNotFound``) drops the query for
that device with one ``notice`` event. Any other error at probe time (a flaky read, a busy
driver) keeps the query: per-tick errors are data, recorded by the collector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pynvml

from agent.model import BatchBuilder

Emit = Callable[[BatchBuilder, Any], None]

#: Errors meaning "this device will never answer this query".
UNSUPPORTED = (
    pynvml.NVMLError_NotSupported,
    pynvml.NVMLError_FunctionNotFound,
    pynvml.NVMLError_NoPermission,
    pynvml.NVMLError_InvalidArgument,
)


@dataclass(frozen=True, slots=True)
class Variant:
    """One way to answer a query: an NVML call and what to do with its result."""

    function: str  # the NVML function, for notices
    fetch: Callable[[], Any]
    emit: Emit


@dataclass(frozen=True, slots=True)
class Query:
    """A named reading with fallbacks, tried in order (``_v3`` before ``_v2``...)."""

    name: str
    variants: tuple[Variant, ...]


class BoundQuery(NamedTuple):
    """What the hot path calls: ``emit(builder, fetch())``; ``function`` answered the probe."""

    name: str
    fetch: Callable[[], Any]
    emit: Emit
    function: str


class Notice(NamedTuple):
    """A one-time remark about a device (kind ``notice``), emitted in the first batch."""

    entity: str
    detail: dict[str, Any]


def query(name: str, function: str, fetch: Callable[[], Any], emit: Emit) -> Query:
    """A query with a single variant."""
    return Query(name, (Variant(function, fetch, emit),))


def unsupported_reason(exc: pynvml.NVMLError) -> str:
    if isinstance(exc, pynvml.NVMLError_FunctionNotFound):
        return "function not found (driver too old)"
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return "no permission"
    if isinstance(exc, pynvml.NVMLError_InvalidArgument):
        return "invalid argument for this device"
    return "not supported"


def probe(entity: str, queries: Sequence[Query]) -> tuple[list[BoundQuery], list[Notice]]:
    """Bind the first answering variant of every query; one notice per dropped query.

    ``GPU_IS_LOST`` propagates: the caller drops the whole device.
    """
    bound: list[BoundQuery] = []
    notices: list[Notice] = []
    for q in queries:
        tried: list[str] = []
        last: pynvml.NVMLError | None = None
        for variant in q.variants:
            try:
                variant.fetch()
            except pynvml.NVMLError_GpuIsLost:
                raise
            except UNSUPPORTED as exc:
                tried.append(variant.function)
                last = exc
                continue
            except pynvml.NVMLError:
                pass  # transient: keep the query, the tick records its errors
            bound.append(BoundQuery(q.name, variant.fetch, variant.emit, variant.function))
            break
        else:
            assert last is not None
            notices.append(
                Notice(
                    entity,
                    {
                        "query": q.name,
                        "functions": tried,
                        "reason": unsupported_reason(last),
                        "message": f"{q.name} is {unsupported_reason(last)} on {entity}; not recorded",
                    },
                )
            )
    return bound, notices
