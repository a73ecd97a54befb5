"""The vectorised field rows give exactly the rows of the per-field implementation before them.

Both readers (``tests/collectors/nvml_fields_reference.py`` is the old one, unchanged) get the
same random driver answers tick after tick: counters that step, wrap at 64 bits or at their
KiB width, reset, jump, are read twice in one driver sample, fail, or come as a narrower
type; scalars of both integer types; links going up and down. Every tick's entities, metrics
and values (with their Python types) must be the same.
"""

from __future__ import annotations

import random

import pynvml
import pytest

from agent.model import BatchBuilder
from collectors.nvml_fields import FieldReader
from tests.collectors import nvml_fields_reference as reference

U64 = 1 << 64
ULL = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
UINT = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
COUNTERS = {
    pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES,
    pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES,
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
}


def _readers(links: int):
    new, old = FieldReader(None, "gpu0"), reference.FieldReader(None, "gpu0")
    new.link_count = old.link_count = links
    (new_variant,) = new._query(new.groups()).variants
    (old_variant,) = old._query(old.groups()).variants
    return new_variant, old_variant


class _Driver:
    """Random answers for every slot of a request, kept from tick to tick."""

    def __init__(self, seed: int, ids: list[tuple[int, int]], rare: float) -> None:
        self.rng = random.Random(seed)
        self.ids = ids
        self.rare = rare
        self.ts = 1_700_000_000_000_000
        self.raw = []
        for field_id, _ in ids:
            if field_id in COUNTERS:
                # Near its wrap: an NVLink KiB counter at 2**54; a PCIe one at 2**64, whose
                # total then outgrows 64 bits (the per-counter path's Python ints), if rare.
                near_wrap = self.rng.random() < 0.3 and (rare > 0 or field_id in _NVLINK)
                top = (U64 if field_id in COUNTERS - _NVLINK else (1 << 54)) - 1
                self.raw.append(
                    top - self.rng.randrange(1 << 30) if near_wrap else self.rng.randrange(1 << 50)
                )
            else:
                self.raw.append(self.rng.randrange(1 << 20))

    def tick(self) -> list[tuple[int, int, int, int]]:
        """(timestamp, value type, return, raw value) of every slot."""
        rng, rare = self.rng, self.rare
        same_sample = rng.random() < rare
        if not same_sample:
            self.ts += 1_000_000 + rng.randrange(-20_000, 20_000)
        rows = []
        for i, (field_id, _) in enumerate(self.ids):
            value_type = ULL if rng.random() > rare / 4 else UINT
            ret = pynvml.NVML_SUCCESS if rng.random() > rare / 4 else pynvml.NVML_ERROR_UNKNOWN
            if field_id in COUNTERS:
                roll = rng.random()
                if roll < rare / 3:
                    self.raw[i] = rng.randrange(1 << 12)  # reset
                elif roll < rare / 2:
                    self.raw[i] = (self.raw[i] + (1 << 62)) % U64  # a jump
                elif not same_sample:
                    nvlink = field_id in _NVLINK  # KiB: up to 16 GiB/s, below the cap
                    width, most = (1 << 54, 1 << 24) if nvlink else (U64, 1 << 30)
                    self.raw[i] = (self.raw[i] + rng.randrange(most)) % width
            elif field_id == pynvml.NVML_FI_DEV_NVLINK_GET_STATE:
                self.raw[i] = pynvml.NVML_NVLINK_STATE_ACTIVE if rng.random() > 0.2 else 0
                value_type = UINT if rng.random() > rare else ULL
            elif rng.random() < 0.3:
                self.raw[i] += rng.randrange(3)
            ts = self.ts - rng.randrange(1000)
            rows.append((ts, value_type, ret, self.raw[i]))
        return rows


_NVLINK = {
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
}


def _answer(values, rows) -> None:
    for slot, (ts, value_type, ret, raw) in zip(values, rows):
        slot.timestamp, slot.valueType, slot.nvmlReturn = ts, value_type, ret
        slot.value.ullVal = raw


def _columns(b: BatchBuilder):
    batch = b.build()
    return list(batch.entities), list(batch.metrics), [(type(v), v) for v in batch.values]


@pytest.mark.parametrize("links", [0, 4, 18])
@pytest.mark.parametrize(("seed", "rare"), [(1, 0.0), (2, 0.02), (3, 0.1), (4, 0.3)])
def test_vectorised_field_rows_are_the_per_field_rows(links, seed, rare):
    new, old = _readers(links)
    request = new.fetch.__self__  # FieldRequest.fetch, bound
    slow = []
    rows_of = request.rows
    request.rows = lambda: slow.append(1) or rows_of()
    ids = [(s.fieldId, s.scopeId) for s in request.values]
    assert ids == [(s.fieldId, s.scopeId) for s in old.fetch.values]
    driver = _Driver(seed, ids, rare)
    ticks = 300
    for tick in range(ticks):
        rows = driver.tick()
        _answer(request.values, rows)
        _answer(old.fetch.values, rows)
        ts = 1000.0 + tick
        b_new, b_old = BatchBuilder("nvml", ts), BatchBuilder("nvml", ts)
        new.emit(b_new, request.array)
        old.emit(b_old, list(reference._ROW.iter_unpack(old.fetch.view)))
        assert _columns(b_new) == _columns(b_old), f"tick {tick}"
    if rare == 0.0:
        assert len(slow) == 1  # only the first tick, which has no previous reading
    elif rare < 0.05:
        assert 1 < len(slow) < ticks  # both paths ran, from each other's state
