"""Catalog → exported names, units and attributes; the per-tick series index and its caps."""

from __future__ import annotations

import pytest

from agent.catalog import CATALOG, Catalog, metric
from agent.model import BatchBuilder
from agent.snapshot import SnapshotHub
from exporters.naming import build_plan, dcgm_labels, entity_attributes, process_of
from exporters.series import SeriesIndex

GPU0 = {
    "gpu0": {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-aaa",
        "pci_bus_id": "00000000:18:00.0",
    }
}


def test_every_catalog_metric_has_an_otel_route_and_dcgm_ones_only_on_request():
    plain, dcgm = build_plan(("otel",)), build_plan(("otel", "dcgm"))
    assert set(plain.routes) == {m.name for m in CATALOG}
    assert not any(name.startswith("DCGM_") for name in plain.instruments)
    with_dcgm = {m.dcgm_name for m in CATALOG if m.dcgm_name}
    assert with_dcgm and with_dcgm <= set(dcgm.instruments)


def test_a_metric_added_to_the_catalog_is_exported_without_code_changes():
    added = metric(
        "gpu.nvjpg.utilization",
        "1",
        "gauge",
        "NVJPG busy share.",
        source="nvml",
        dcgm="DCGM_FI_DEV_NVJPG_UTIL",
    )
    plan = build_plan(("otel", "dcgm"), Catalog([*CATALOG, added]))
    assert plan.instruments["accelwatch.gpu.nvjpg.utilization"].unit == "1"
    (otel_route, dcgm_route) = plan.routes["gpu.nvjpg.utilization"]
    assert dcgm_route.instrument == "DCGM_FI_DEV_NVJPG_UTIL" and dcgm_route.scale == 100


def test_metrics_sharing_a_semantic_name_become_one_instrument_told_apart_by_attributes():
    plan = build_plan()
    spec = plan.instruments["hw.gpu.io"]
    assert spec.kind == "counter" and spec.unit == "By"
    assert set(spec.metrics) == {"gpu.pcie.tx_bytes", "gpu.pcie.rx_bytes"}
    directions = {plan.routes[m][0].fixed_attributes["network.io.direction"] for m in spec.metrics}
    assert directions == {"transmit", "receive"}
    assert len(plan.instruments["system.cpu.mode.utilization"].metrics) >= 8


def test_a_unit_clash_on_a_shared_name_falls_back_to_the_accelwatch_namespace():
    catalog = Catalog(
        [
            metric("a.errors", "{error}", "counter", "a", source="x", otel="hw.errors"),
            metric("b.events", "{event}", "counter", "b", source="x", otel="hw.errors"),
        ]
    )
    plan = build_plan(catalog=catalog)
    assert plan.routes["a.errors"][0].instrument == "hw.errors"
    assert plan.routes["b.events"][0].instrument == "accelwatch.b.events"


@pytest.mark.parametrize(
    ("name", "scale", "as_rate"),
    [
        ("gpu.utilization", 100.0, False),  # DCGM_FI_DEV_GPU_UTIL in percent
        ("gpu.memory.used", 1 / 2**20, False),  # DCGM_FI_DEV_FB_USED in MiB
        ("gpu.tensor.activity", 1.0, False),  # DCGM_FI_PROF_* ratios stay 0..1
        ("gpu.energy", 1000.0, False),  # DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION in mJ
        ("gpu.pcie.tx_bytes", 1.0, True),  # DCGM_FI_PROF_PCIE_TX_BYTES in bytes/s
        ("gpu.pcie.link.gen", 1.0, False),  # a dimensionless "1" that is not a ratio
    ],
)
def test_dcgm_values_use_dcgm_exporter_units(name, scale, as_rate):
    (route,) = [r for r in build_plan(("otel", "dcgm")).routes[name] if r.dcgm]
    assert route.instrument == CATALOG[name].dcgm_name
    assert route.scale == pytest.approx(scale) and route.as_rate is as_rate


@pytest.mark.parametrize(
    ("source", "entity", "expected"),
    [
        ("host", "host", {}),
        ("host", "cpu3", {"cpu.logical_number": 3}),
        ("disk", "disk:nvme0n1", {"system.device": "nvme0n1"}),
        ("host", "net:eth0", {"network.interface.name": "eth0"}),
        (
            "fabric",
            "ib:mlx5_0/1",
            {
                "system.device": "mlx5_0/1",
                "accelwatch.ib.device": "mlx5_0",
                "accelwatch.ib.port": 1,
            },
        ),
        (
            "process",
            "4242",
            {
                "process.pid": 4242,
                "process.executable.name": "python",
                "accelwatch.process.role": "main",
            },
        ),
        (
            "nvml",
            "gpu0",
            {
                "hw.id": "GPU-aaa",
                "hw.type": "gpu",
                "hw.vendor": "NVIDIA",
                "hw.name": "NVIDIA H100 80GB HBM3",
            },
        ),
        (
            "nvml",
            "gpu0/nvlink3",
            {
                "hw.id": "GPU-aaa",
                "hw.type": "gpu",
                "hw.vendor": "NVIDIA",
                "hw.name": "NVIDIA H100 80GB HBM3",
                "accelwatch.gpu.nvlink": 3,
            },
        ),
        (
            "nvml",
            "gpu0/pid42",
            {
                "hw.id": "GPU-aaa",
                "hw.type": "gpu",
                "hw.vendor": "NVIDIA",
                "hw.name": "NVIDIA H100 80GB HBM3",
                "process.pid": 42,
            },
        ),
        (
            "nvml",
            "gpu0/mig1",
            {
                "hw.id": "MIG-bbb",
                "hw.parent": "GPU-aaa",
                "hw.type": "gpu",
                "hw.vendor": "NVIDIA",
                "hw.name": "NVIDIA H100 MIG 3g.40gb",
            },
        ),
        ("unregistered", "dev0", {"accelwatch.entity": "dev0"}),
    ],
)
def test_entities_map_to_semantic_convention_attributes(source, entity, expected):
    described = {
        **GPU0,
        "4242": {"name": "python", "role": "main"},
        "gpu0/mig1": {"uuid": "MIG-bbb", "name": "NVIDIA H100 MIG 3g.40gb"},
    }
    assert entity_attributes(source, entity, described) == expected


def test_dcgm_labels_cover_gpus_and_mig_but_not_links_or_processes():
    labels = dcgm_labels("gpu0", GPU0, "node1")
    assert labels == {
        "gpu": "0",
        "UUID": "GPU-aaa",
        "device": "nvidia0",
        "modelName": "NVIDIA H100 80GB HBM3",
        "Hostname": "node1",
        "pci_bus_id": "00000000:18:00.0",
    }
    mig = dcgm_labels(
        "gpu0/mig2",
        {**GPU0, "gpu0/mig2": {"name": "NVIDIA H100 MIG 1g.10gb", "gpu_instance_id": 9}},
        "node1",
    )
    assert (mig["GPU_I_ID"], mig["GPU_I_PROFILE"], mig["UUID"]) == ("9", "1g.10gb", "GPU-aaa")
    assert dcgm_labels("gpu0/mig2", GPU0, "node1")["GPU_I_ID"] == "2"
    assert dcgm_labels("gpu0/nvlink1", GPU0, "node1") is None
    assert dcgm_labels("gpu0/pid7", GPU0, "node1") is None
    assert process_of("nvml", "gpu0/pid7") == 7 and process_of("process", "12") == 12
    assert process_of("nvml", "gpu0") is None


def _tick(hub: SnapshotHub, ts: float, pids: list[int], gpu_pids: list[int], energy: float):
    proc = BatchBuilder("process", ts)
    for pid in pids:
        proc.add(str(pid), "process.memory.rss", 1000.0 + pid)
        proc.describe(str(pid), name="python", role="worker")
    gpu = BatchBuilder("nvml", ts)
    gpu.describe("gpu0", **GPU0["gpu0"])
    gpu.add("gpu0", "gpu.utilization", 0.5)
    gpu.add("gpu0", "gpu.pcie.tx_bytes", energy * 10)
    for pid in gpu_pids:
        gpu.add(f"gpu0/pid{pid}", "gpu.process.memory", 2.0**30)
    return hub.publish(ts, [proc.build(), gpu.build()], {})


def test_series_index_caps_processes_and_drops_foreign_gpu_processes():
    hub = SnapshotHub()
    health: dict = {}
    index = SeriesIndex(build_plan(("otel", "dcgm")), "node1", max_processes=2, health=health)
    snap = _tick(hub, 100.0, pids=[10, 11, 12], gpu_pids=[10, 99], energy=1.0)
    rss = index.observations(snap, "process.memory.usage")
    assert [o.attributes["process.pid"] for o in rss] == [10, 11]
    assert index.capped_processes == 1 and health["export.capped_processes"] == 1
    gpu_procs = index.observations(snap, "accelwatch.gpu.process.memory")
    assert [o.attributes["process.pid"] for o in gpu_procs] == [10]  # 99 is not the job's
    # an admitted process keeps its series; a freed slot goes to the next one
    snap = _tick(hub, 101.0, pids=[11, 12, 13], gpu_pids=[], energy=2.0)
    rss = index.observations(snap, "process.memory.usage")
    assert [o.attributes["process.pid"] for o in rss] == [11, 12]


def test_series_index_builds_once_per_tick_and_converts_dcgm_values():
    hub = SnapshotHub()
    index = SeriesIndex(build_plan(("otel", "dcgm")), "node1")
    snap = _tick(hub, 100.0, pids=[10], gpu_pids=[], energy=1.0)
    assert index.observations(snap, "DCGM_FI_PROF_PCIE_TX_BYTES") == []  # no rate yet
    first = index.observations(snap, "DCGM_FI_DEV_GPU_UTIL")
    assert first is index.observations(snap, "DCGM_FI_DEV_GPU_UTIL")
    assert first[0].value == 50.0 and first[0].attributes["UUID"] == "GPU-aaa"
    snap = _tick(hub, 102.0, pids=[10], gpu_pids=[], energy=3.0)
    (rate,) = index.observations(snap, "DCGM_FI_PROF_PCIE_TX_BYTES")
    assert rate.value == pytest.approx(10.0)  # (30 - 10) bytes over 2 s
    (io,) = [o for o in index.observations(snap, "hw.gpu.io")]
    assert io.value == 30.0 and io.attributes["network.io.direction"] == "transmit"
