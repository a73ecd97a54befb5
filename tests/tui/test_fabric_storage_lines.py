"""The host panel's port and mount lines are read by role from a snapshot, whatever the source."""

from __future__ import annotations

from agent.snapshot import Snapshot
from tests.tui.screen import async_test
from tui.fabric_storage import mount_lines, port_lines


def _snap() -> Snapshot:
    before = {
        ("ib:mlx5_0/1", "host.ib.rx_bytes"): 0.0,
        ("ib:mlx5_0/1", "host.ib.tx_bytes"): 0.0,
        ("ib:mlx5_0/1", "host.ib.errors"): 10.0,
        ("mount:/mnt/data", "fs.read_bytes"): 0.0,
        ("mount:/mnt/data", "fs.write_bytes"): 0.0,
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
    }
    return Snapshot(
        ts=12.0,
        seq=2,
        batches=(),
        values=now,
        previous=before,
        previous_ts=10.0,
        entity_attrs={"mount:/mnt/data": {"mountpoint": "/mnt/data", "fstype": "nfs4"}},
    )


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
                    ports=port_lines(snap), mounts=mount_lines(snap))  # fmt: skip

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
