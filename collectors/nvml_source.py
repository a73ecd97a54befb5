"""The NVML source's declaration: its metrics, entity kinds, collector and simulator.

Kept apart from :mod:`collectors.nvml` so that registering the source imports no ``pynvml``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.catalog.gpu import METRICS, SOURCE
from agent.source import Collector, EntityKind, SourceSpec

_GPU_IDENTITY = {"hw.id": "{uuid}", "hw.name": "{name}", "hw.type": "gpu", "hw.vendor": "NVIDIA"}


def _collector() -> Collector:
    from collectors.nvml import NvmlCollector

    return NvmlCollector()


def _simulator(scenario: str, owner_pids: Callable[[], list[int]]) -> Any:
    """Patch pynvml with the scenario's simulated GPUs (maybe none), held by ``owner_pids``."""
    from collectors.sim import install, load_scenario

    return install(load_scenario(scenario), job_pids=owner_pids)


#: What findings on these GPUs tell the user to do (``SourceSpec.advice``): CUDA / PyTorch tools.
ADVICE = {
    "profile": "profile one step (torch.profiler or `nsys profile`) for gaps between kernels",
    "stacks": "Dump the stacks now (`py-spy dump --pid PID` on every rank, or "
    "TORCH_NCCL_DUMP_ON_TIMEOUT=1 for NCCL flight-recorder traces) to see which "
    "collective or lock each rank waits in; then check for a dead rank or host.",
    "input": "Give the input pipeline more CPU: raise DataLoader num_workers (if cores are "
    "free), enable pin_memory and persistent_workers, move decoding/augmentation to the GPU "
    "(e.g. DALI), or cache preprocessed data.",
    "memory_full": "Leave headroom: smaller micro-batches with gradient accumulation, "
    "activation checkpointing, PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.",
    "memory_growth": "Look for tensors kept across steps (losses appended without "
    ".detach()/.item(), growing caches, graphs retained); compare "
    "torch.cuda.memory_summary() between steps.",
    "checkpoint": "Checkpoint asynchronously (torch.distributed.checkpoint async_save, or copy "
    "to CPU and write in a thread), write less often, or to faster local storage first.",
    "device_query": "run `nvidia-smi -q` and `dcgmi diag -r 2` on the node",
}

SPEC = SourceSpec(
    name=SOURCE,
    label="NVIDIA GPUs (NVML)",
    advice=ADVICE,
    metrics=tuple(METRICS),
    entity_kinds=(
        EntityKind("accelerator", "gpu(?P<gpu>[0-9]+)", _GPU_IDENTITY),
        EntityKind(
            "accelerator.part",
            "gpu(?P<gpu>[0-9]+)/mig(?P<mig>[0-9]+)",
            {"hw.id": "{uuid}", "hw.name": "{name}", "hw.type": "gpu"},
        ),
        EntityKind(
            "link", "gpu(?P<gpu>[0-9]+)/nvlink(?P<link>[0-9]+)", {"accelwatch.gpu.nvlink": "{link}"}
        ),
        EntityKind(
            "accelerator.process", "gpu(?P<gpu>[0-9]+)/pid(?P<pid>[0-9]+)", {"process.pid": "{pid}"}
        ),
    ),
    collector=_collector,
    simulator=_simulator,
)
