"""The TPU source's one declaration, found through the ``accelwatch.sources`` entry point group.

Chips are ``accelerator`` entities and the devices of two-device chips ``accelerator.part``
entities, so every role-based rule, card and exporter applies to them with no TPU case.
Heavy modules (gRPC, the libtpu stubs, the simulator) load inside the factories only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.source import Collector, EntityKind, SourceSpec
from collectors.tpu.metrics import METRICS, RUNTIME_ENTITY, SOURCE


def _collector() -> Collector:
    from collectors.tpu.collector import TpuCollector

    return TpuCollector()


def _tpu_part(scenario: str) -> Any:
    from collectors.sim import load_scenario

    loaded = load_scenario(scenario)  # ScenarioError is a ValueError: one line
    if loaded.tpu is None:
        raise ValueError(f"scenario {scenario!r} simulates 'tpu' but has no [tpu] table")
    return loaded


def _simulator(scenario: str, owner_pids: Callable[[], list[int]] | None = None) -> Any:
    """Serve the scenario's TPU VM on 127.0.0.1 and point the collector at it."""
    from collectors.sim.tpu.vm import install

    return install(_tpu_part(scenario), owner_pids)


def _check_scenario(scenario: str) -> None:
    _tpu_part(scenario)


#: What findings on TPU chips tell the user to do (``SourceSpec.advice``): JAX / XProf tools.
ADVICE = {
    "profile": "capture a trace of one step (`jax.profiler.trace`, viewed in XProf or "
    "TensorBoard) and look for gaps between HLO programs",
    "stacks": "Dump every worker's Python stacks now (`py-spy dump --pid PID`) and the "
    "runtime's state (`tpu-info`, libtpu's logs under /tmp/tpu_logs) to see which collective "
    "or host wait each worker is in; then check for a dead worker or slice.",
    "input": "Feed the chips faster: more input workers and host prefetch (tf.data "
    "`.prefetch`, Grain worker_count), cache decoded data, and put the next batch on the "
    "chips while the current step runs (`jax.device_put` ahead, flax `prefetch_to_device`).",
    "transfer": "Move less between host and chips: keep data resident in HBM, transfer once "
    "per step in large buffers overlapped with compute (async dispatch, `prefetch_to_device`), "
    "and avoid `jax.device_get` / `.block_until_ready()` inside the step.",
    "collective": "Cut cross-slice (DCN) traffic: keep only the data-parallel axis across "
    "slices and model-parallel axes inside a slice (ICI), overlap collectives with compute "
    "(XLA's latency-hiding scheduler), all-reduce less often (gradient accumulation), and "
    "check the DCN path (MEGASCALE_* settings, NIC health).",
    "memory_full": "Leave HBM headroom: a smaller per-chip batch with gradient accumulation, "
    "rematerialisation (`jax.checkpoint`), parameters and optimizer state sharded over the "
    "chips, bf16 activations.",
    "memory_growth": "Look for device arrays kept alive across steps (results appended to "
    "Python lists, caches), donate buffers (`jax.jit(..., donate_argnums=...)`), and compare "
    "`jax.profiler.save_device_memory_profile` snapshots between steps.",
    "checkpoint": "Checkpoint asynchronously (Orbax `AsyncCheckpointer` / "
    "`CheckpointManager` with async enabled), write less often, or to local SSD first and "
    "copy to Cloud Storage in the background.",
    "device_query": "check the chips with `tpu-info` and the node's health in the Cloud "
    "console (`gcloud compute tpus tpu-vm describe`)",
}

SPEC = SourceSpec(
    name=SOURCE,
    label="TPU",
    metrics=METRICS,
    entity_kinds=(
        EntityKind(
            "accelerator",
            r"tpu[0-9]+",
            {"hw.id": "{entity}", "hw.name": "{name}", "hw.type": "tpu"},
        ),
        EntityKind(
            "accelerator.part",
            r"tpu[0-9]+/core[0-9]+",
            {"hw.id": "{entity}", "hw.name": "{name}", "hw.parent": "{chip}"},
        ),
        # the host's runtime: state and the per-host megascale.* latencies
        EntityKind("accelerator.runtime", RUNTIME_ENTITY, {"accelwatch.entity": "{entity}"}),
    ),
    collector=_collector,
    simulator=_simulator,
    check_scenario=_check_scenario,
    advice=ADVICE,
)
