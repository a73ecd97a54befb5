"""The host panel's port and mount lines are read by role from a snapshot, whatever the source."""

from __future__ import annotations

from agent.model import Batch
from agent.snapshot import Snapshot, SnapshotHub
from tests.tui.screen import async_test
from tui.fabric_storage import RoleIndex, interface_lines, mount_lines, port_lines


def _batches(values: dict[tuple[str, str], float], ts: float, attrs: dict) -> list[Batch]:
    """One batch per source, as the sampler hands them to the snapshot hub."""
    by_source: dict[str, list] = {}
    for (entity, metric), value in values.items():
        source = "storage" if entity.startswith("mount:") else "fabric"
        if metric in ("host.net.rx_bytes", "host.net.tx_bytes"):
            source = "host"
        by_source.setdefault(source, []).append((entity, metric, value))
    return [Batch(src, ts, [e for e, _, _ in rows], [m for _, m, _ in rows],
                  [v for _, _, v in rows],
                  entity_attrs={e: a for e, a in attrs.items() if any(e == r[0] for r in rows)})
            for src, rows in by_source.items()]  # fmt: skip


def _tick(before: dict, now: dict, attrs: dict | None = None) -> Snapshot:
    """Two ticks through the real hub: values from the batches, rates against the first."""
    hub = SnapshotHub()
    hub.publish(10.0, _batches(before, 10.0, attrs or {}), {})
    return hub.publish(12.0, _batches(now, 12.0, {}), {})


def _snap() -> Snapshot:
    before = {
        ("ib:mlx5_0/1", "host.ib.rx_bytes"): 0.0,
        ("ib:mlx5_0/1", "host.ib.tx_bytes"): 0.0,
        ("ib:mlx5_0/1", "host.ib.errors"): 10.0,
        ("mount:/mnt/data", "fs.read_bytes"): 0.0,
        ("mount:/mnt/data", "fs.write_bytes"): 0.0,
        ("net:eth0", "host.net.rx_bytes"): 0.0,
        ("net:eth0", "host.net.tx_bytes"): 0.0,
    }
    now = {
        ("ib:mlx5_0/1", "host.ib.rx_bytes"): 20e9,
        ("ib:mlx5_0/1", "host.ib.tx_bytes"): 10e9,
        ("ib:mlx5_0/1", "host.ib.errors"): 50.0,
        ("ib:mlx5_0/1", "host.ib.rate"): 12.5e9,
        ("ib:mlx5_0/1", "host.ib.rate.max"): 25e9,
        ("ib:mlx5_0/1", "host.ib.up"): 1.0,
        ("mount:/mnt/data", "fs.read_bytes"): 240e6,
        ("mount:/mnt/data", "fs.write_bytes"): 0.0,
        ("mount:/mnt/data", "fs.latency"): 0.031,
        ("net:eth0", "host.net.speed"): 12.5e9,
        ("net:eth0", "host.net.up"): 1.0,
        ("net:eth0", "host.net.rx_bytes"): 5e9,
        ("net:eth0", "host.net.tx_bytes"): 1e9,
    }
    return _tick(before, now, {"mount:/mnt/data": {"mountpoint": "/mnt/data", "fstype": "nfs4"}})


def test_port_lines_show_rates_line_rate_and_errors_per_second():
    [port] = port_lines(_snap())
    assert port.name == "mlx5_0/1"
    assert (port.rx, port.tx) == (10e9, 5e9)
    assert (port.rate, port.rate_max, port.errors) == (12.5e9, 25e9, 20.0)


def test_mount_lines_show_type_throughput_and_latency():
    [mount] = mount_lines(_snap())
    assert (mount.name, mount.fstype) == ("/mnt/data", "nfs4")
    assert (mount.read, mount.write, mount.latency) == (120e6, 0.0, 0.031)


def test_no_ports_or_mounts_give_no_lines():
    empty = Snapshot(ts=1.0, seq=1, batches=(), values={})
    assert port_lines(empty) == () and mount_lines(empty) == ()


@async_test
async def test_the_host_panel_draws_a_line_per_port_and_mount():
    from textual.app import App

    from tui.views import HostView
    from tui.widgets.host import HostPanel

    snap = _snap()
    view = HostView((0.5,), 0.5, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 10e9, 5e9,
                    ports=port_lines(snap), mounts=mount_lines(snap),
                    interfaces=interface_lines(snap))  # fmt: skip

    class One(App):
        def compose(self):
            yield HostPanel()

    app = One()
    async with app.run_test(size=(100, 12)):
        panel = app.query_one(HostPanel)
        panel.show(view)
        text = panel.render().plain
    assert "mlx5_0/1" in text and "of 100/200 Gb/s" in text and "err 20/s" in text
    assert "/mnt/data (nfs4)" in text and "31.0 ms" in text
    assert "nic  eth0 ↓2.5 GB/s ↑500 MB/s of 100 Gb/s 20%" in text


def test_interface_lines_show_rates_against_line_rate_for_busy_or_down_interfaces_only():
    before = {("net:eth0", "host.net.rx_bytes"): 0.0, ("net:eth0", "host.net.tx_bytes"): 0.0,
              ("net:veth1a2b", "host.net.rx_bytes"): 0.0, ("net:lo", "host.net.rx_bytes"): 0.0,
              ("net:eno2", "host.net.rx_bytes"): 0.0}  # fmt: skip
    now = {
        ("net:eth0", "host.net.rx_bytes"): 50e9,  # 25 GB/s on a 200 Gb/s NIC
        ("net:eth0", "host.net.tx_bytes"): 2e9,
        ("net:eth0", "host.net.speed"): 25e9,
        ("net:eth0", "host.net.up"): 1.0,
        ("net:veth1a2b", "host.net.rx_bytes"): 600.0,  # 300 B/s: neighbour discovery, no line
        ("net:lo", "host.net.rx_bytes"): 8e9,  # the loopback: never a line
        ("net:eno2", "host.net.rx_bytes"): 0.0,  # idle, but down: a line
        ("net:eno2", "host.net.speed"): 1.25e9,
        ("net:eno2", "host.net.up"): 0.0,
    }
    lines = {n.name: n for n in interface_lines(_tick(before, now))}
    assert set(lines) == {"eth0", "eno2"}
    eth0 = lines["eth0"]
    assert (eth0.rx, eth0.tx, eth0.speed, eth0.up) == (25e9, 1e9, 25e9, 1.0)
    assert eth0.utilization == 1.0
    assert lines["eno2"].up == 0.0


def test_a_down_virtual_interface_gives_no_line_a_down_physical_one_does():
    values = {
        ("net:ifb0", "host.net.rx_bytes"): 0.0,  # an unused ifb: down, virtual
        ("net:ifb0", "host.net.speed"): 0.0,
        ("net:ifb0", "host.net.up"): 0.0,
        ("net:eno2", "host.net.rx_bytes"): 0.0,
        ("net:eno2", "host.net.speed"): 1.25e9,
        ("net:eno2", "host.net.up"): 0.0,
    }
    attrs = {"net:ifb0": {"kind": "virtual"}, "net:eno2": {"kind": "physical"}}
    hub = SnapshotHub()
    hub.publish(10.0, _batches(values, 10.0, attrs), {})
    snap = hub.publish(12.0, _batches(values, 12.0, attrs), {})
    assert [n.name for n in interface_lines(snap)] == ["eno2"]


@async_test
async def test_the_host_panel_marks_a_down_interface():
    from textual.app import App

    from tui.views import HostView
    from tui.widgets.host import HostPanel

    before = {("net:eno2", "host.net.rx_bytes"): 0.0}
    now = {("net:eno2", "host.net.rx_bytes"): 0.0, ("net:eno2", "host.net.speed"): 1.25e9,
           ("net:eno2", "host.net.up"): 0.0}  # fmt: skip
    view = HostView((0.5,), 0.5, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, None, None,
                    interfaces=interface_lines(_tick(before, now)))  # fmt: skip

    class One(App):
        def compose(self):
            yield HostPanel()

    app = One()
    async with app.run_test(size=(100, 12)) as pilot:
        panel = app.query_one(HostPanel)
        panel.show(view)
        await pilot.pause()
        text = panel.render().plain
    assert "nic  eno2 ↓0 B/s ↑" in text and "of 10 Gb/s DOWN" in text


def test_role_index_scans_a_batch_again_only_when_its_columns_change():
    entities, metrics = ["ib:mlx5_0/1", "mount:/d"], ["host.ib.rx_bytes", "fs.read_bytes"]
    scanned = []

    class Counting(list):
        def __iter__(self):
            scanned.append(1)
            return super().__iter__()

    index = RoleIndex()
    cols = Counting(metrics)
    for tick in range(3):  # a collector hands on the same column lists while its layout holds
        snap = Snapshot(ts=float(tick), seq=tick, values={},
                        batches=(Batch("fabric", float(tick), entities, cols, [1.0, 2.0]),))  # fmt: skip
        found = index.entities(snap)
    assert len(scanned) == 1
    assert index.with_role(found, "port.rx_bytes") == ["ib:mlx5_0/1"]
    assert index.with_role(found, "mount.read_bytes") == ["mount:/d"]
    moved = ["host.ib.tx_bytes", "fs.read_bytes"]  # a new layout: scanned again
    found = index.entities(Snapshot(ts=4.0, seq=4, values={},
                                    batches=(Batch("fabric", 4.0, entities, moved, [1.0, 2.0]),)))  # fmt: skip
    assert index.with_role(found, "port.rx_bytes") == []
    assert index.with_role(found, "port.tx_bytes") == ["ib:mlx5_0/1"]
