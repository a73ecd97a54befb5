"""Readings NVML offers both as a direct call and as a field value, declared once.

Read as fields they cost nothing extra: they ride in the device's one
``nvmlDeviceGetFieldValues`` request (:mod:`collectors.nvml_fields`) instead of a driver call
each (ECC alone was four). Each group names the direct query of
:func:`collectors.nvml_device.gpu_queries` it replaces, which stays the fallback where a
driver does not answer the fields (older drivers lack the newer ids). Units and meanings
match the direct calls: mW for power (the driver's 1 s average, as ``gpu.power`` is
declared), mJ for energy, counts for replays, ECC and remapped rows.

Deliberately not here: the enforced power limit (``NVML_FI_DEV_POWER_CURRENT_LIMIT`` is the
management limit, which other limiters can undercut), GPU temperature, clocks, the clock
event mask, P-state, PCIe link generation and width, utilization and memory: NVML has no
field with their meaning, so they stay direct calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import pynvml

MAX_ENERGY_RATE_W = 1e5  # a step above this many joules per second is a counter reset
ENERGY_FIELD = pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION


@dataclass(frozen=True, slots=True)
class FieldScalar:
    """One field recorded as one metric: ``value * scale``, or 1/0 for a ``flag``."""

    field_id: int
    metric: str
    scale: float = 1.0
    flag: bool = False


_NV = pynvml
#: (direct query name, its fields): supported (or not) together, like the direct call.
SCALAR_GROUPS: tuple[tuple[str, tuple[FieldScalar, ...]], ...] = (
    ("power", (FieldScalar(_NV.NVML_FI_DEV_POWER_AVERAGE, "gpu.power", 0.001),)),
    ("energy", (FieldScalar(ENERGY_FIELD, "gpu.energy"),)),  # a counter: stepped, not scaled
    ("pcie replays", (FieldScalar(_NV.NVML_FI_DEV_PCIE_REPLAY_COUNTER, "gpu.pcie.replays"),)),
    (
        "ecc",
        (
            FieldScalar(_NV.NVML_FI_DEV_ECC_SBE_VOL_TOTAL, "gpu.ecc.volatile.corrected"),
            FieldScalar(_NV.NVML_FI_DEV_ECC_DBE_VOL_TOTAL, "gpu.ecc.volatile.uncorrected"),
            FieldScalar(_NV.NVML_FI_DEV_ECC_SBE_AGG_TOTAL, "gpu.ecc.aggregate.corrected"),
            FieldScalar(_NV.NVML_FI_DEV_ECC_DBE_AGG_TOTAL, "gpu.ecc.aggregate.uncorrected"),
        ),
    ),
    (
        "remapped rows",
        (
            FieldScalar(_NV.NVML_FI_DEV_REMAPPED_COR, "gpu.remapped_rows.correctable"),
            FieldScalar(_NV.NVML_FI_DEV_REMAPPED_UNC, "gpu.remapped_rows.uncorrectable"),
            FieldScalar(_NV.NVML_FI_DEV_REMAPPED_PENDING, "gpu.remapped_rows.pending", flag=True),
            FieldScalar(_NV.NVML_FI_DEV_REMAPPED_FAILURE, "gpu.remapped_rows.failure", flag=True),
        ),
    ),
)
