"""A missing, late, failing, slow or lost runtime is a state and a notice, never a stall."""

from __future__ import annotations

import time

import grpc
import pytest

from collectors.tpu.runtime import TargetSpecError, parse_targets
from tests.helpers import VALUES_DEADLINE_S


def _events(batch, kind: str) -> list[dict]:
    return [dict(e.detail) for e in batch.events if e.kind == kind]


def _values(batch, metric: str) -> dict[str, float]:
    return {e: v for e, m, v in zip(batch.entities, batch.metrics, batch.values) if m == metric}


def test_targets_come_from_the_override_then_libtpus_variable_then_the_default():
    assert parse_targets(None, {}) == ["localhost:8431"]
    env = {"TPU_RUNTIME_METRICS_PORTS": "8431,8432, 8433"}
    assert parse_targets(None, env) == ["localhost:8431", "localhost:8432", "localhost:8433"]
    assert parse_targets("10.0.0.2:9000,9001", env) == ["10.0.0.2:9000", "10.0.0.2:9001"]
    assert parse_targets("[::1]:8431", {}) == ["[::1]:8431"]
    with pytest.raises(TargetSpecError, match="not a port"):
        parse_targets("localhost:http", {})


def test_a_runtime_not_up_yet_is_one_notice_then_backoff_then_data(tpu_vm, clock):
    sim, collector = tpu_vm("tpu-v6e-runtime-late")  # answers from 10 s
    batches = [collector.collect(clock.advance(1)) for _ in range(25)]
    down = [d for b in batches for d in _events(b, "tpu_runtime_down")]
    up = [d for b in batches for d in _events(b, "tpu_runtime_up")]
    assert len(down) == 1 and "not up" in down[0]["reason"] and down[0]["severity"] == "info"
    assert len(up) == 1
    # backoff 1, 2, 4, 8 s: tries at 1, 2, 4, 8, 16 s, not one per tick
    assert sim.server.requested["ListSupportedMetrics"] == 5
    first_data = next(i for i, b in enumerate(batches) if _values(b, "tpu.duty_cycle"))
    assert 9 <= first_data < 25
    assert _values(batches[0], "tpu.runtime.up") == {"tpu": 0.0}
    assert _values(batches[-1], "tpu.runtime.up") == {"tpu": 1.0}
    assert _values(batches[0], "tpu.job.processes")["tpu0"] == 1.0  # chips known meanwhile


def test_errors_mid_run_skip_the_values_with_one_notice_and_recover(tpu_vm, clock):
    sim, collector = tpu_vm("tpu-v5e-8-healthy")
    assert _values(collector.collect(clock.advance(1)), "tpu.duty_cycle")
    sim.server.fail_with = grpc.StatusCode.INTERNAL
    bad = [collector.collect(clock.advance(1)) for _ in range(3)]
    assert not any(_values(b, "tpu.duty_cycle") for b in bad)
    failed = [d for b in bad for d in _events(b, "tpu_metric_failed")]
    names = [d["metric"] for d in failed]
    assert len(names) == len(set(names)) and "tpu.runtime.tensorcore.dutycycle.percent" in names
    assert all(d["code"] == "INTERNAL" for d in failed)
    sim.server.fail_with = None
    assert _values(collector.collect(clock.advance(1)), "tpu.duty_cycle")["tpu0"] > 0.5


def test_unknown_metrics_are_noticed_once_and_never_asked_for(tpu_vm, clock):
    sim, _ = tpu_vm("tpu-v5e-8-healthy", start=False)
    sim.server.extra_offered = ("tpu.runtime.future.thing", "megascale.new.distribution")
    _, collector = sim, _start(sim)
    batches = [collector.collect(clock.advance(1)) for _ in range(3)]
    skipped = [d for b in batches for d in _events(b, "tpu_metric_skipped")]
    assert skipped == [
        {"metrics": ["megascale.new.distribution", "tpu.runtime.future.thing"], "reason": "unknown"}
    ]
    assert sim.server.requested["tpu.runtime.future.thing"] == 0
    assert sim.server.requested["tpu.runtime.hbm.memory.usage.bytes"] == 3
    collector.close()


def test_malformed_answers_are_skipped_with_one_notice(tpu_vm, clock):
    sim, _ = tpu_vm("tpu-v5e-8-healthy", start=False)
    sim.server.malformed = ("tpu.runtime.hbm.memory.usage.bytes",)
    collector = _start(sim)
    batches = [collector.collect(clock.advance(1)) for _ in range(3)]
    skipped = [d for b in batches for d in _events(b, "tpu_metric_skipped")]
    assert skipped == [
        {"metric": "tpu.runtime.hbm.memory.usage.bytes", "reason": "malformed sample"}
    ]
    assert not any(_values(b, "tpu.memory.used") for b in batches)
    assert all(_values(b, "tpu.memory.total") for b in batches)
    collector.close()


def test_a_slow_runtime_costs_one_deadline_per_tick_not_one_per_metric(tpu_vm, clock):
    sim, collector = tpu_vm("tpu-v5e-8-healthy", deadline=0.2)
    collector.collect(clock.advance(1))
    sim.server.delay_s = 1.0  # every call now takes a second
    took = []
    for _ in range(2):
        t0 = time.monotonic()
        batch = collector.collect(clock.advance(1))
        took.append(time.monotonic() - t0)
    assert max(took) < 0.6, took  # 7 metrics + status, all bounded together by 0.2 s
    assert not _values(batch, "tpu.duty_cycle")
    assert _values(batch, "tpu.runtime.up") == {"tpu": 1.0}  # slow, not gone
    sim.server.delay_s = 0.0


def test_a_runtime_lost_mid_run_is_one_warning_then_zero_up(tpu_vm, clock):
    sim, collector = tpu_vm("tpu-runtime-lost")  # stops answering at 30 s
    batches = [collector.collect(clock.advance(1)) for _ in range(40)]
    down = [d for b in batches for d in _events(b, "tpu_runtime_down")]
    assert len(down) == 1 and "lost" in down[0]["reason"] and down[0]["severity"] == "warning"
    assert _values(batches[25], "tpu.duty_cycle") and not _values(batches[35], "tpu.duty_cycle")
    assert _values(batches[35], "tpu.runtime.up") == {"tpu": 0.0}


def test_a_runtime_whose_port_closes_is_lost_not_an_exception(tpu_vm, clock):
    sim, collector = tpu_vm("tpu-v5e-8-healthy")
    collector.collect(clock.advance(1))
    sim.server.stop()
    t0 = time.monotonic()
    batch = collector.collect(clock.advance(1))
    assert time.monotonic() - t0 < 0.6
    assert _values(batch, "tpu.runtime.up") == {"tpu": 0.0}
    assert _events(batch, "tpu_runtime_down")


def test_no_chips_and_no_runtime_configured_is_unavailable(tmp_path):
    from agent.errors import CollectorUnavailable
    from agent.source import CollectContext
    from collectors.tpu.collector import TpuCollector

    c = TpuCollector(env={"ACCELWATCH_TPU_SYS_ROOT": str(tmp_path)})
    with pytest.raises(CollectorUnavailable, match="no TPU chips"):
        c.start(CollectContext())


def _start(sim):
    import os

    from agent.source import CollectContext
    from collectors.tpu.collector import TpuCollector

    collector = TpuCollector(env=sim.env, deadline=VALUES_DEADLINE_S)
    pid = os.getpid()
    collector.start(CollectContext(pid, lambda: frozenset([pid])))
    return collector


def test_the_samplers_ticks_stay_on_time_while_the_runtime_hangs(tpu_vm, clock):
    from agent.sampler import Sampler

    sim, collector = tpu_vm("tpu-v5e-8-healthy", deadline=0.2)
    collector.collect(time.time())  # connected
    sim.server.delay_s = 5.0  # hung: every call would take 5 s
    sampler = Sampler([collector], interval=0.5)
    sampler.start()
    time.sleep(2.6)
    sampler.stop()
    sim.server.delay_s = 0.0
    assert sampler.stats.ticks >= 5 and sampler.stats.missed_ticks == 0
    assert not sampler.stats.disabled


def test_a_malformed_runtime_address_makes_the_source_unavailable_with_the_reason(tmp_path):
    from agent.errors import CollectorUnavailable
    from agent.source import CollectContext
    from collectors.tpu.collector import TpuCollector

    c = TpuCollector(
        env={"ACCELWATCH_TPU_SYS_ROOT": str(tmp_path), "ACCELWATCH_TPU_RUNTIME": "h:x"}
    )
    with pytest.raises(CollectorUnavailable, match="'x' is not a port"):
        c.start(CollectContext())
