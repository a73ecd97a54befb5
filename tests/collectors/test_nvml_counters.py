"""Pure parts of the NVML collector: counters, field decoding, query probing, event data."""

from __future__ import annotations

import ctypes
import struct

import pynvml
import pytest

from agent.model import BatchBuilder
from collectors.nvml_counters import U32, U64, CounterTrack
from collectors.nvml_events import EventWatcher
from collectors.nvml_fields import decode
from collectors.nvml_probe import Query, Variant, probe, query

SECOND = 1_000_000  # µs


def test_first_reading_seeds_the_total_and_has_no_rate():
    track = CounterTrack(scale=1024)
    assert track.update(1000, 5 * SECOND) is None
    assert track.total == 1024 * 1000


def test_rate_uses_the_reading_timestamps():
    track = CounterTrack()
    track.update(1_000, 0)
    assert track.update(6_000, SECOND // 2) == pytest.approx(10_000)
    assert track.total == 6_000 and track.rate == pytest.approx(10_000)


def test_wrap_at_the_counter_width_counts_the_few_bytes_it_should():
    track = CounterTrack()
    track.update(U64 - 100, 0)
    assert track.update(50, SECOND) == 150
    assert track.raw_total == U64 + 50  # exact; the float total is for the store
    narrow = CounterTrack(modulus=U32)
    narrow.update(U32 - 10, 0)
    assert narrow.update(5, SECOND) == 15


def test_reset_adds_nothing_and_counts_as_a_reset():
    track = CounterTrack(max_rate=1e12)
    track.update(5_000_000_000, 0)
    assert track.update(1_000, SECOND) is None  # dropped to ~0: a reset, not a 2**64 step
    assert track.total == 5_000_000_000 and track.resets == 1
    assert track.update(3_000, 2 * SECOND) == 2_000  # and counting resumes from the new base


def test_implausible_forward_jump_is_treated_like_a_reset():
    track = CounterTrack(max_rate=1e3)
    track.update(10, 0)
    assert track.update(10 + 10**9, SECOND) is None
    assert track.total == 10


def test_same_driver_sample_read_twice_has_no_rate():
    track = CounterTrack()
    track.update(7, SECOND)
    assert track.update(7, SECOND) is None
    assert track.total == 7


@pytest.mark.parametrize(
    ("value_type", "raw", "expected"),
    [
        (pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 2**63 + 5, 2**63 + 5),
        (pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, (0xDEAD << 32) | 42, 42),  # upper bytes are not ours
        (pynvml.NVML_VALUE_TYPE_SIGNED_INT, 0xFFFFFFFF, -1),
        (pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG, U64 - 2, -2),
        (pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT, 0x1_0007, 7),
        (pynvml.NVML_VALUE_TYPE_DOUBLE, struct.unpack("=Q", struct.pack("=d", 1.5))[0], 1.5),
    ],
)
def test_field_values_decode_by_their_value_type(value_type, raw, expected):
    assert decode(value_type, raw) == expected


def _raise(code: int):
    def fetch():
        raise pynvml.NVMLError(code)

    return fetch


def _emit_value(b: BatchBuilder, value: float) -> None:
    b.add("gpu0", "gpu.temperature", value)


def test_probe_binds_the_first_answering_variant_and_notes_what_is_unsupported():
    queries = [
        Query(
            "memory",
            (
                Variant("v2", _raise(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND), _emit_value),
                Variant("v1", lambda: 1.0, _emit_value),
            ),
        ),
        query("fan", "nvmlDeviceGetFanSpeed", _raise(pynvml.NVML_ERROR_NOT_SUPPORTED), _emit_value),
        query("flaky", "nvmlDeviceGetTemperature", _raise(pynvml.NVML_ERROR_UNKNOWN), _emit_value),
    ]
    bound, notices = probe("gpu0", queries)
    assert [(q.name, q.function) for q in bound] == [
        ("memory", "v1"),
        ("flaky", "nvmlDeviceGetTemperature"),
    ]
    [notice] = notices
    assert notice.entity == "gpu0"
    assert notice.detail["query"] == "fan" and notice.detail["reason"] == "not supported"
    b = BatchBuilder("nvml", 1.0)
    name, fetch, emit, _ = bound[0]
    emit(b, fetch())
    assert list(b.build().values) == [1.0]


def test_probe_lets_a_lost_gpu_propagate():
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        probe("gpu0", [query("x", "f", _raise(pynvml.NVML_ERROR_GPU_IS_LOST), _emit_value)])


def test_event_data_becomes_xid_and_ecc_events_for_the_right_gpu():
    handles = [ctypes.create_string_buffer(8) for _ in range(2)]
    devices = [(f"gpu{i}", ctypes.cast(h, pynvml.c_nvmlDevice_t)) for i, h in enumerate(handles)]
    watcher = EventWatcher(devices, clock=lambda: 42.0)

    def data(gpu: int, event_type: int, payload: int = 0) -> pynvml.c_nvmlEventData_t:
        d = pynvml.c_nvmlEventData_t()
        d.device = devices[gpu][1]
        d.eventType, d.eventData = event_type, payload
        d.gpuInstanceId = d.computeInstanceId = 0xFFFFFFFF
        return d

    xid = watcher._event(data(1, pynvml.nvmlEventTypeXidCriticalError, 79))
    assert (xid.ts, xid.entity, xid.kind, xid.detail) == (42.0, "gpu1", "xid", {"xid": 79})
    dbe = watcher._event(data(0, pynvml.nvmlEventTypeDoubleBitEccError))
    assert (dbe.entity, dbe.kind, dbe.detail["type"], dbe.detail["severity"]) == (
        "gpu0",
        "ecc",
        "uncorrected",
        "error",
    )
    sbe = watcher._event(data(0, pynvml.nvmlEventTypeSingleBitEccError))
    assert (sbe.detail["type"], sbe.detail["severity"]) == ("corrected", "warning")
