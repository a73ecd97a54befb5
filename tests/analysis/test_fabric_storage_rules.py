"""Fabric and storage findings from simulated runs: each rule has a scenario that triggers it
and one that must not. The scenario's fake sysfs/procfs trees advance with the simulated clock
and the real fabric / storage collectors read them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from agent.analysis import analyze_run
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector
from agent.store import connect
from collectors.fabric.collector import FabricCollector
from collectors.sim.fabric_storage.sim import SimFabric, SimStorage, part_of
from collectors.storage.collector import StorageCollector
from tests.analysis.expect import of_rule, seconds
from tests.analysis.recording import T0, Recording, record, scenario_ref


class SimulatedSource(Collector):
    """A real collector over a scenario's simulated tree, advanced to each tick's time."""

    def __init__(self, scenario: str, source: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"aw-{source}-"))
        part = part_of(scenario_ref(scenario), source)
        if source == "fabric":
            self.sim = SimFabric(part, self.root / "sys")
            self.inner: Collector = FabricCollector(sys_root=self.root / "sys")
        else:
            self.sim = SimStorage(part, self.root / "proc", self.root / "sys")
            self.inner = StorageCollector(str(self.root / "proc"), str(self.root / "sys"))
        self.source = self.inner.source

    def start(self, ctx: CollectContext) -> None:
        self.inner.start(ctx)

    def collect(self, now: float) -> Batch:
        self.sim.advance(now - T0)
        return self.inner.collect(now)


class InterfaceCounters(Collector):
    """The host source's interface byte counters (``net:<if>``), read from the simulated
    tree's ``class/net/<if>/statistics`` as the kernel reports them (psutil reads the same
    counters from ``/proc/net/dev``, which the simulated tree cannot replace)."""

    source = "host"

    def __init__(self, fabric: SimulatedSource) -> None:
        self.base = fabric.root / "sys" / "class" / "net"

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        for stats in sorted(self.base.glob("*/statistics")):
            for name in ("rx", "tx"):
                value = int((stats / f"{name}_bytes").read_text())
                b.add(f"net:{stats.parent.name}", f"host.net.{name}_bytes", value)
        return b.build()


def simulated_collectors(scenario: str, sources: tuple[str, ...]) -> list:
    """Factories of the scenario's simulated sources (and, with NICs, their byte counters)."""
    made: dict[str, SimulatedSource] = {}

    def simulated(source: str) -> SimulatedSource:
        made[source] = SimulatedSource(scenario, source)
        return made[source]

    out = [lambda s=s: simulated(s) for s in sources]
    if "fabric" in sources and part_of(scenario_ref(scenario), "fabric").nics:
        out.append(lambda: InterfaceCounters(made["fabric"]))
    return out


def _findings(tmp_path_factory, scenario: str, sources: tuple[str, ...]):
    path = tmp_path_factory.mktemp("fs-runs") / f"{scenario}.duckdb"
    spec = Recording(
        scenario=scenario, seconds=60, collectors=simulated_collectors(scenario, sources)
    )
    db, run_id = record(path, spec)
    con = connect(str(db))
    try:
        return analyze_run(con, run_id, store=False), str(db)
    finally:
        con.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache: dict[str, tuple[list, str]] = {}

    def get(scenario: str, sources: tuple[str, ...], *, db: bool = False):
        if scenario not in cache:
            cache[scenario] = _findings(tmp_path_factory, scenario, sources)
        return cache[scenario][1] if db else cache[scenario][0]

    return get


HEALTHY = ("fabric-storage-healthy", ("fabric", "storage"))


def test_a_degrading_ib_port_gives_a_fabric_health_finding_on_that_port(runs):
    found = of_rule(runs("ib-port-degrading", ("fabric",)), "fabric-health")
    assert [f.entity for f in found] == ["ib:mlx5_2/1"]
    f = found[0]
    assert f.severity == "critical" and f.evidence["went_down"]
    assert "downtrained" in f.summary and "errors/s" in f.summary
    assert 15 <= seconds(f.start) <= 25
    assert f.evidence["rate_max_bytes_per_s"] == 25e9


def test_a_healthy_fabric_gives_no_fabric_health_finding(runs):
    assert of_rule(runs(*HEALTHY), "fabric-health") == []


def test_roce_congestion_gives_a_congestion_finding_on_every_port(runs):
    found = of_rule(runs("roce-congestion", ("fabric",)), "fabric-congestion")
    assert {f.entity for f in found} == {f"ib:mlx5_{i}/1" for i in range(4)}
    f = found[0]
    assert f.evidence["cnp_per_s"] == pytest.approx(8000, rel=0.1)  # 4000/s sent + handled
    assert f.evidence["ecn_per_s"] == pytest.approx(20000, rel=0.1)
    assert 15 <= seconds(f.start) <= 25 and seconds(f.end) <= 55
    assert of_rule(runs("roce-congestion", ("fabric",)), "fabric-health") == []


def test_a_degrading_port_without_congestion_marks_gives_no_congestion_finding(runs):
    assert of_rule(runs("ib-port-degrading", ("fabric",)), "fabric-congestion") == []
    assert of_rule(runs(*HEALTHY), "fabric-congestion") == []


# -- fabric-health one condition at a time (test scenarios in tests/analysis/scenarios/) ------


def _only_port(runs, scenario: str, port: str):
    """The scenario's one fabric-health finding, on ``port``; no congestion finding."""
    found = runs(scenario, ("fabric",))
    assert of_rule(found, "fabric-congestion") == []
    health = of_rule(found, "fabric-health")
    assert [f.entity for f in health] == [port]
    return health[0]


def test_errors_on_a_port_at_full_rate_are_a_warning_naming_the_errors_only(runs):
    f = _only_port(runs, "ib-port-errors-only", "ib:mlx5_1/1")
    assert f.severity == "warning" and not f.evidence["went_down"]
    assert f.evidence["kind"] == "degraded"
    assert f.evidence["errors_per_s"] == pytest.approx(40, rel=0.05)
    assert f.evidence["rate_bytes_per_s"] == f.evidence["rate_max_bytes_per_s"] == 25e9
    assert "40 errors/s" in f.summary
    assert "downtrained" not in f.summary and "left ACTIVE" not in f.summary
    assert 19 <= seconds(f.start) <= 21


def test_a_port_going_down_without_errors_is_critical_and_names_only_the_down(runs):
    f = _only_port(runs, "ib-port-down-only", "ib:mlx5_3/1")
    assert f.severity == "critical" and f.evidence["went_down"]
    assert f.evidence["kind"] == "down"
    # link_downed counts the going down once: no other error over the 30 s down
    assert f.evidence["errors_per_s"] * f.evidence["duration_s"] == pytest.approx(1, abs=0.01)
    assert f.evidence["rate_bytes_per_s"] == f.evidence["rate_max_bytes_per_s"]
    assert "left ACTIVE/LinkUp" in f.summary
    assert "errors/s" not in f.summary and "downtrained" not in f.summary
    assert 29 <= seconds(f.start) <= 31


def test_a_port_downtraining_without_errors_is_a_warning_naming_its_rate(runs):
    f = _only_port(runs, "ib-port-downtrained-only", "ib:mlx5_0/1")
    assert f.severity == "warning" and not f.evidence["went_down"]
    assert f.evidence["errors_per_s"] == 0
    assert f.evidence["rate_bytes_per_s"] == 12.5e9
    assert f.evidence["rate_max_bytes_per_s"] == 25e9
    assert "running at 100 Gb/s of its 200 Gb/s (downtrained)" in f.summary
    assert "errors/s" not in f.summary and "left ACTIVE" not in f.summary
    assert 19 <= seconds(f.start) <= 21


def test_a_dual_port_hca_flags_the_port_that_dropped_not_the_one_cabled_slower(runs):
    """mlx5_0/2 runs 100 Gb/s all run beside its 200 Gb/s sibling: never seen faster, it is
    not downtrained. mlx5_1/2 ran 200 Gb/s and dropped to 100 at 20 s: it is."""
    f = _only_port(runs, "ib-dual-port-split", "ib:mlx5_1/2")
    assert f.severity == "warning" and f.evidence["rate_bytes_per_s"] == 12.5e9
    assert f.evidence["rate_max_bytes_per_s"] == 25e9 and "(downtrained)" in f.summary
    assert 19 <= seconds(f.start) <= 21


def test_a_port_already_downtrained_when_the_run_starts_is_not_flagged(runs):
    """The documented limit: sysfs has no supported rate, so a single-port device first seen
    at half rate has nothing honest to be compared with."""
    found = runs("ib-port-downtrained-from-start", ("fabric",))
    assert of_rule(found, "fabric-health") == []
    assert of_rule(found, "fabric-congestion") == []


def test_congestion_marks_at_full_throughput_give_no_fabric_finding(runs):
    """DCQCN marking while every port still moves its best 80 Gb/s costs the job nothing."""
    found = runs("roce-marks-at-full-rate", ("fabric",))
    assert of_rule(found, "fabric-congestion") == []
    assert of_rule(found, "fabric-health") == []
    # the marks were there, at the congestion run's rate: only the throughput differs
    from agent.runs import open_read

    db = runs("roce-marks-at-full-rate", ("fabric",), db=True)
    con = open_read(db)
    try:
        (marks,) = con.duckdb.execute(
            "SELECT (max(value) - min(value)) / 30 FROM samples WHERE entity = 'ib:mlx5_0/1'"
            " AND metric = 'host.ib.ecn_marked'"
        ).fetchone()
    finally:
        con.close()
    assert marks == pytest.approx(20000, rel=0.1)


def test_slow_lustre_reads_while_the_gpus_idle_name_the_lustre_mount(runs):
    found = of_rule(runs("lustre-read-starving", ("storage",)), "storage-input-bound")
    assert [f.entity for f in found] == ["mount:/lustre/datasets"]
    f = found[0]
    assert "/lustre/datasets (lustre)" in f.summary and "150.0 MB/s" in f.summary
    assert "RTT" not in f.summary  # Lustre's llite stats have no round trip
    assert f.evidence["fstype"] == "lustre" and f.evidence["kind"] == "lustre"
    assert f.evidence["read_bytes_per_s"] == pytest.approx(150e6, rel=0.05)
    assert f.evidence["latency_s"] > 0.01
    assert 9 <= seconds(f.start) <= 21
    # "usually" is the latency while the GPUs were busy (0.5 ms), not the run's median
    assert f.evidence["latency_while_busy_s"] == pytest.approx(0.0005, rel=0.2)
    assert "(0.5 ms when the GPUs were busy)" in f.summary, f.summary


def test_lustre_reads_at_full_speed_with_busy_gpus_give_no_storage_finding(runs):
    from agent.analysis.rules.fabric import role_metrics
    from agent.runs import open_read

    found = runs("lustre-reads-at-full-speed", ("storage",))
    assert of_rule(found, "storage-input-bound") == []
    assert of_rule(found, "storage-checkpoint-stall") == []
    con = open_read(runs("lustre-reads-at-full-speed", ("storage",), db=True))
    try:
        (read,) = con.duckdb.execute(
            "SELECT (max(value) - min(value)) / (epoch(max(ts)) - epoch(min(ts))) FROM samples"
            f" WHERE entity = 'mount:/lustre/datasets' AND metric = '{role_metrics('mount.read_bytes')[0]}'"
        ).fetchone()
    finally:
        con.close()
    assert read == pytest.approx(2000e6, rel=0.05)  # the mount was read, at full speed


def test_climbing_nfs_latency_names_the_mount_its_type_rate_and_latency(runs):
    found = of_rule(runs("nfs-latency-starving", ("storage",)), "storage-input-bound")
    assert [f.entity for f in found] == ["mount:/mnt/data"]
    f = found[0]
    assert "/mnt/data (nfs4)" in f.summary and "MB/s" in f.summary and "RTT" in f.summary
    assert f.evidence["fstype"] == "nfs4"
    assert f.evidence["read_bytes_per_s"] == pytest.approx(120e6, rel=0.05)
    assert f.evidence["latency_s"] > 0.01
    # the baseline quoted is the latency before the server slowed, not the climb's median
    assert f.evidence["latency_while_busy_s"] == pytest.approx(0.001, rel=0.2)
    assert "(1.0 ms when the GPUs were busy)" in f.summary, f.summary


def test_healthy_mounts_give_no_storage_findings(runs):
    found = runs(*HEALTHY)
    assert of_rule(found, "storage-input-bound") == []
    assert of_rule(found, "storage-checkpoint-stall") == []


def test_a_checkpoint_to_lustre_names_the_lustre_mount(runs):
    found = of_rule(runs("checkpoint-lustre", ("storage",)), "storage-checkpoint-stall")
    assert [f.entity for f in found] == ["mount:/lustre/scratch"]
    f = found[0]
    assert "/lustre/scratch (lustre)" in f.summary
    assert f.evidence["stalls"] == 2
    assert f.evidence["write_bytes_per_s"] == pytest.approx(2000e6, rel=0.1)
    assert of_rule(runs("checkpoint-lustre", ("storage",)), "storage-input-bound") == []


def test_the_report_shows_each_port_and_mount(runs):
    from agent.report import build_report, render_text
    from agent.runs import open_read

    db = runs(*HEALTHY, db=True)
    con = open_read(db)
    try:
        report = build_report(con, None, db)
    finally:
        con.close()
    section = report.summary.fabric_storage
    assert [p["entity"] for p in section["ports"]] == [f"ib:mlx5_{i}/1" for i in range(4)]
    assert section["ports"][0]["rx_bytes_per_s"] == pytest.approx(15e9, rel=0.02)
    assert section["ports"][0]["rate_max"] == 25e9 and not section["ports"][0]["was_down"]
    mounts = {m["mountpoint"]: m for m in section["mounts"]}
    assert mounts["/mnt/data"]["fstype"] == "nfs4"
    assert mounts["/mnt/data"]["read_bytes_per_s"] == pytest.approx(300e6, rel=0.02)
    assert mounts["/mnt/data"]["latency_p50_s"] == pytest.approx(0.001, rel=0.05)
    text = render_text(report)
    assert "Fabric ports" in text and "mlx5_0/1" in text and "/lustre/scratch" in text
    assert "| /mnt/data | nfs4 |" in render_text(report, markdown=True)


def test_comm_bound_weighs_infiniband_traffic_against_the_ports_line_rate(runs):
    found = of_rule(runs("comm-bound", ("fabric",)), "comm-bound")
    assert len(found) == 8
    f = found[0]
    # four 200 Gb/s ports at 180 Gb/s each way: 90% of the line rate
    assert f.evidence["ib_line_rate_bytes_per_s"] == pytest.approx(4 * 25e9)
    assert f.evidence["ib_share_of_line_rate"] == pytest.approx(0.9, rel=0.05)
    assert "of the ports' 100.0 GB/s line rate each way" in f.summary
    assert f.evidence["nic_share_of_line_rate"] is None  # no NIC traffic recorded: no claim
    assert "network interfaces" not in f.summary
    assert of_rule(runs(*HEALTHY), "comm-bound") == []


def test_comm_bound_weighs_nic_traffic_against_the_interfaces_line_rate(runs):
    found = of_rule(runs("comm-bound-ethernet", ("fabric",)), "comm-bound")
    assert len(found) == 8
    f = found[0]
    # two plain 100 Gb/s NICs at 85 Gb/s each way, no IB port: 85% of the busiest one's rate
    assert f.evidence["ib_bytes_per_s"] == 0 and f.evidence["ib_line_rate_bytes_per_s"] is None
    assert f.evidence["nic_share_of_line_rate"] == pytest.approx(0.85, rel=0.05)
    assert f.evidence["nic_bytes_per_s"] == pytest.approx(2 * 85e9 / 8, rel=0.05)
    assert f.evidence["nic_line_rate_bytes_per_s"] == pytest.approx(100e9 / 8)
    assert f.evidence["nic_interface"] in ("net:eth0", "net:eth1")
    assert "host.net.rx_bytes" in f.evidence["metrics"]
    assert "host.net.speed" in f.evidence["metrics"]
    assert "of eth" in f.summary and "12.5 GB/s line rate" in f.summary


def test_ipoib_interfaces_are_not_weighed_again_beside_their_ports(runs, tmp_path):
    """An IPoIB interface's bytes are its InfiniBand port's too: described ``ipoib`` by the
    fabric source, it is left out of the NIC evidence. Here the Ethernet run's two busy
    interfaces are described so: with no port carrying traffic, nothing is communication-bound
    any more (their port would have shown it)."""
    import shutil

    db = tmp_path / "ipoib.duckdb"
    shutil.copy(runs("comm-bound-ethernet", ("fabric",), db=True), db)
    con = connect(str(db))
    try:
        con.execute(
            "UPDATE entity_log SET attrs = json_object('interface', "
            "replace(entity, 'net:', ''), 'kind', 'ipoib') WHERE entity LIKE 'net:%'"
        )
        (run_id,) = con.execute("SELECT run_id FROM runs").fetchone()
        found = of_rule(analyze_run(con, run_id, store=False), "comm-bound")
    finally:
        con.close()
    assert of_rule(runs("comm-bound-ethernet", ("fabric",)), "comm-bound")  # as recorded
    assert found == []


def test_the_reports_port_and_mount_figures_come_from_one_statement_over_samples(runs):
    """Every port and mount figure (rates, line rate, down, latency quantiles) is one grouped
    scan of the run's samples, not one statement per figure."""
    from agent.report_fabric_storage import summarize_fabric_storage
    from agent.runs import open_read

    class Counting:
        def __init__(self, con):
            self.con, self.over_samples = con, 0

        def execute(self, sql, params=()):
            self.over_samples += "FROM samples" in sql
            return self.con.execute(sql, params)

    db = runs(*HEALTHY, db=True)
    con = open_read(db)
    try:
        run_id = con.duckdb.execute("SELECT run_id FROM runs").fetchone()[0]
        counting = Counting(con.duckdb)
        section = summarize_fabric_storage(counting, run_id)
    finally:
        con.close()
    assert counting.over_samples == 1
    assert len(section["ports"]) == 4 and len(section["mounts"]) == 2
    assert section["ports"][0]["rate_max"] == 25e9


def _html_report(db: str):
    from agent.report import build_report
    from agent.report_html import render_html
    from agent.runs import open_read

    con = open_read(db)
    try:
        report = build_report(con, None, db)
        return report, render_html(con, report), con.duckdb
    finally:
        con.close()


def test_the_html_report_shows_each_port_and_mount_with_charts(runs):
    import re
    import xml.etree.ElementTree as ET

    report, page, _ = _html_report(runs(*HEALTHY, db=True))
    section = page.split("<h2>Fabric and storage</h2>", 1)[1]
    ports = re.findall(r"<tr><td>(mlx5_\d/1)</td><td>([^<]*)</td>", section)
    assert [p for p, _ in ports] == [f"mlx5_{i}/1" for i in range(4)]
    assert dict(ports)["mlx5_0/1"] == "15.0 GB/s"  # the same figure as the text report's
    mounts = dict(re.findall(r"<tr><td>(/[^<]*)</td><td>([^<]*)</td>", section))
    assert mounts["/mnt/data"] == "nfs4"
    svgs = re.findall(r"<svg.*?</svg>", section, re.S)
    assert len(svgs) == 3
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    for title in ("Fabric port throughput", "Mount throughput", "Mount latency"):
        assert f"<b>{title}" in section


def test_the_html_charts_show_a_port_going_down(runs):
    from agent.report_fabric_storage_html import _series
    from agent.runs import open_read

    db = runs("ib-port-degrading", ("fabric",), db=True)
    report, page, _ = _html_report(db)
    section = page.split("<h2>Fabric and storage</h2>", 1)[1]
    assert "<td>mlx5_2/1</td>" in section and "<td>yes</td>" in section  # was down
    assert "<title>fabric-health on ib:mlx5_2/1</title>" in section  # its window shaded
    con = open_read(db)
    try:
        series = _series(con.duckdb, report.run.run_id, ("port.rx_bytes", "port.tx_bytes"),
                         True, 5.0, 8e-9)  # fmt: skip
    finally:
        con.close()
    t0 = report.run.started
    healthy = [y for x, y in series["mlx5_0/1"] if 5 <= x - t0 < 50]  # whole buckets
    assert healthy and all(y == pytest.approx(240, rel=0.05) for y in healthy)  # 120 + 120
    down = [y for x, y in series["mlx5_2/1"] if 45 <= x - t0 < 55]
    assert down and max(down) == pytest.approx(0, abs=1e-6)


def test_a_run_without_ports_or_mounts_has_no_fabric_and_storage_html_section(tmp_path):
    from agent.report_fabric_storage_html import render_fabric_storage_html

    class _Summary:
        fabric_storage: dict = {"ports": [], "mounts": []}

    class _Report:
        summary = _Summary()

    assert render_fabric_storage_html(None, _Report(), 1.0) == ""  # type: ignore[arg-type]


def test_comm_bound_line_rate_is_read_from_the_frames_aggregate_not_the_samples():
    """The ports' line rate comes from ``aw_agg`` (each port's highest bucket, summed): a frame
    without a ``samples`` view still gives it, and other metrics there do not count."""
    import duckdb

    from agent.analysis.engine import Context
    from agent.analysis.rules.transfer import fabric_line_rate

    con = duckdb.connect()
    con.execute("CREATE TABLE aw_agg (entity VARCHAR, metric VARCHAR, k BIGINT, max DOUBLE)")
    con.execute(
        "INSERT INTO aw_agg VALUES ('ib:mlx5_0/1', 'host.ib.rate', 0, 25e9),"
        " ('ib:mlx5_0/1', 'host.ib.rate', 1, 12.5e9), ('ib:mlx5_1/1', 'host.ib.rate', 0, 50e9),"
        " ('ib:mlx5_1/1', 'host.ib.rx_bytes', 0, 9e12)"
    )
    ctx = Context(con, None)  # type: ignore[arg-type]  # the rule reads no frame info
    assert fabric_line_rate(ctx) == pytest.approx(75e9)
    con.execute("DELETE FROM aw_agg WHERE metric = 'host.ib.rate'")
    assert fabric_line_rate(ctx) is None
