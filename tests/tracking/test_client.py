"""The training client: cheap, never raising, converting what it can, counting what it loses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from accelwatch import _socket, _wire
from accelwatch._client import Client
from tests.tracking.conftest import PYTHON, child_env, script


class FakeTensor:
    """What a torch scalar tensor offers the client: ``.item()``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def item(self) -> float:
        return self.value


def _agent_client(receiver) -> Client:
    return Client(environ={_wire.ENV_SOCKET: receiver.path})


def _drain(receiver, client: Client, until=lambda tick: True, timeout: float = 5.0):
    """Ticks taken until ``until`` holds for the merged result (a loaded machine may split one
    job's messages over several ticks: every part of a tick is merged)."""
    client.flush()
    merged = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tick = receiver.aggregator.take()
        if merged is None:
            merged = tick
        else:
            merged.metrics += tick.metrics
            merged.settings += tick.settings
            merged.joined.update(tick.joined)
            merged.finished += tick.finished
            merged.notes += tick.notes
            for rank, part in tick.ranks.items():
                mine = merged.ranks.setdefault(rank, part)
                if mine is not part:
                    mine.step_times += part.step_times
                    mine.steps = part.steps if part.steps is not None else mine.steps
                    mine.values += part.values
                    mine.dropped += part.dropped
        if until(merged):
            return merged
        time.sleep(0.05)
    return merged


def test_import_accelwatch_loads_nothing_heavy():
    code = (
        "import sys, accelwatch; accelwatch.log(loss=1.0); accelwatch.step(); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'duckdb', 'agent', 'psutil', 'collectors')]; print(heavy)"
    )
    env = child_env()
    env.pop("ACCELWATCH_MODE", None)
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_agent_calls_do_nothing_and_never_raise(runtime_dir):
    client = Client(environ={_wire.ENV_RUNTIME_DIR: runtime_dir})
    for i in range(1000):
        client.log(loss=float(i), bad=object())
        client.step()
    client.config({"lr": 1e-3})
    client.tag(run="x")
    client.finish()
    stats = client.stats()
    assert stats["agent"] is None and stats["sent"] == 0 and stats["buffered"] == 0
    assert stats["steps"] == 1000 and stats["internal_errors"] == 0


def test_disabled_mode_never_looks_for_an_agent(receiver):
    client = Client(environ={_wire.ENV_SOCKET: receiver.path, _wire.ENV_MODE: "disabled"})
    client.log(loss=1.0)
    client.step()
    assert client.stats()["agent"] is None
    assert receiver.aggregator.counters.datagrams == 0


def test_steps_and_metrics_reach_the_agent_with_pid_and_rank(receiver, monkeypatch):
    client = Client(
        environ={_wire.ENV_SOCKET: receiver.path, "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}
    )
    for i in range(5):
        client.log(loss=1.0 / (i + 1), lr=0.1)
        client.step()
        time.sleep(0.01)
    tick = _drain(receiver, client, lambda t: 3 in t.ranks and t.ranks[3].steps == 5)
    part = tick.ranks[3]
    assert part.steps == 5 and len(part.step_times) == 4
    assert all(0.005 < s < 1.0 for s in part.step_times)
    names = sorted({m[3] for m in tick.metrics})
    assert names == ["loss", "lr"] and all(m[1] == 3 for m in tick.metrics)
    assert [m[2] for m in tick.metrics if m[3] == "loss"] == [0, 1, 2, 3, 4]
    pid, header = tick.joined[3]
    assert pid == os.getpid()
    assert (header["rank"], header["local_rank"], header["world_size"]) == (3, 1, 8)


def test_unsendable_types_converted_or_dropped_with_one_warning_per_key(receiver):
    client = _agent_client(receiver)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            client.log(
                loss=FakeTensor(0.5),
                acc=np.float32(0.25),
                n=np.int64(7),
                good=1.5,
                flag=True,
                name="text",
                obj=object(),
            )
    texts = [str(w.message) for w in caught]
    assert len(texts) == 5, texts  # loss, acc, n converted; name, obj dropped: once each
    assert sum("converted" in t for t in texts) == 3
    assert sum("dropped" in t for t in texts) == 2
    tick = _drain(receiver, client, lambda t: len(t.metrics) >= 15)
    got = {(m[3], m[4]) for m in tick.metrics}
    assert got == {("loss", 0.5), ("acc", 0.25), ("n", 7.0), ("good", 1.5), ("flag", 1.0)}


def test_warnings_as_errors_never_raise_into_training(receiver):
    client = _agent_client(receiver)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.log(loss=FakeTensor(1.0), bad=object())  # would raise if the warning escaped
    assert client.stats()["internal_errors"] == 0


def test_send_failure_is_swallowed_and_counted(runtime_dir):
    os.makedirs(runtime_dir, mode=0o700)
    dead = os.path.join(runtime_dir, "dead.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(dead)
    sock.close()  # the file stays, nobody listens: ECONNREFUSED
    client = Client(environ={_wire.ENV_SOCKET: dead})
    t0 = time.perf_counter()
    for i in range(20_000):
        client.log(loss=float(i))
    client.flush()
    per_call = (time.perf_counter() - t0) / 20_000
    stats = client.stats()
    assert stats["send_errors"].get("ECONNREFUSED", 0) >= 1
    assert stats["dropped"] > 0 and stats["sent"] == 0
    assert per_call < 50e-6, per_call


def test_absent_socket_named_by_the_agent_is_counted_as_enoent(runtime_dir):
    client = Client(environ={_wire.ENV_SOCKET: os.path.join(runtime_dir, "none.sock")})
    client.log(loss=1.0)
    client.flush()
    assert client.stats()["send_errors"].get("ENOENT", 0) >= 1


def test_messages_sent_before_the_agent_binds_are_delivered(runtime_dir, monkeypatch):
    """``accelwatch run`` binds just after the job starts: early calls wait in the queue."""
    monkeypatch.setattr(_socket, "RETRY_MIN_S", 0.0)
    from agent.tracking.aggregate import Aggregator
    from agent.tracking.receiver import Receiver

    path = os.path.join(runtime_dir, "late.sock")
    client = Client(environ={_wire.ENV_SOCKET: path})
    client.config({"lr": 0.5})
    client.log(loss=2.0)
    client.flush()
    assert client.stats()["send_errors"].get("ENOENT", 0) >= 1
    rx = Receiver(path, Aggregator())
    rx.start()
    try:
        time.sleep(0.06)
        client.log(loss=1.0)
        client.flush()
        tick = _drain(rx, client, lambda t: len(t.metrics) >= 2 and t.settings)
        assert sorted(m[4] for m in tick.metrics) == [1.0, 2.0]
        assert [(s[1], s[3], s[4]) for s in tick.settings] == [("config", "lr", "0.5")]
    finally:
        rx.close()


def test_config_said_before_an_agent_attached_reaches_it(runtime_dir):
    """An attaching agent gets the config and tags the script set before it came."""
    from agent.tracking.aggregate import Aggregator
    from agent.tracking.receiver import Receiver

    client = Client(environ={_wire.ENV_RUNTIME_DIR: runtime_dir})
    client.config({"optim": {"lr": 3e-4, "name": "adam"}}, seed=1)
    client.tag(model="mlp")
    client.log(loss=1.0)  # nobody there: nothing kept but config and tags
    path = os.path.join(runtime_dir, _wire.pid_socket_name(os.getpid()))
    rx = Receiver(path, Aggregator())
    rx.start()
    try:
        client._next_probe = 0.0  # the periodic search, now rather than in PROBE_S
        client.log(loss=0.5)
        tick = _drain(rx, client, lambda t: len(t.settings) >= 4)
        settings = {(s[1], s[3]): s[4] for s in tick.settings}
        assert settings == {
            ("config", "optim.lr"): "0.0003",
            ("config", "optim.name"): '"adam"',
            ("config", "seed"): "1",
            ("tag", "model"): '"mlp"',
        }
        assert [m[4] for m in tick.metrics] == [0.5]
    finally:
        rx.close()


def test_client_finds_the_agent_of_its_parent_process(tmp_path, runtime_dir):
    """An agent attached to the job's root: a child (a rank under torchrun) finds its socket."""
    from agent.tracking.aggregate import Aggregator
    from agent.tracking.receiver import Receiver

    rx = Receiver(os.path.join(runtime_dir, _wire.pid_socket_name(os.getpid())), Aggregator())
    rx.start()
    try:
        job = script(
            tmp_path,
            """
            import accelwatch
            accelwatch.log(loss=4.0)
            accelwatch.step()
            accelwatch.finish()
            print(accelwatch.stats()["agent"])
            """,
        )
        out = subprocess.run(
            [PYTHON, str(job)],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(ACCELWATCH_RUNTIME_DIR=runtime_dir, RANK="2"),
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == rx.path
        tick = _drain(rx, Client(environ={}), lambda t: t.finished)
        assert [m[4] for m in tick.metrics] == [4.0] and tick.metrics[0][1] == 2
        assert tick.finished and tick.finished[0][1] == 2
    finally:
        rx.close()


def test_forked_child_starts_with_its_own_state(receiver):
    client = _agent_client(receiver)
    client.config({"lr": 1.0})
    client.step()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0 if client.stats()["steps"] == 0 and client._config == {} else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.stats()["steps"] == 1


@pytest.mark.skipif(sys.platform != "linux", reason="procfs")
def test_oversized_config_is_split_into_datagrams_that_fit(receiver):
    client = _agent_client(receiver)
    big = {f"k{i}": "x" * 900 for i in range(200)}  # ~180 KiB of config
    client.config(big)
    tick = _drain(receiver, client, lambda t: len(t.settings) >= 200)
    assert len(tick.settings) == 200
    assert client.stats()["dropped"] == 0


def test_the_last_messages_queued_on_the_socket_are_taken_in_before_the_last_sample(
    runtime_dir,
):
    """A job's last steps can still sit in the socket's queue when it exits: ``settle`` (the
    session calls it before the run's last sample) reads them whatever the drain thread did."""
    from agent.tracking.aggregate import Aggregator
    from agent.tracking.receiver import Receiver

    path = os.path.join(runtime_dir, "last.sock")
    aggregator = Aggregator()
    rx = Receiver(path, aggregator)
    rx.start()
    rx._stop_thread()  # the drain thread is behind: nothing reads the socket but settle
    try:
        client = Client(environ={_wire.ENV_SOCKET: path})
        for loss in (3.0, 2.0, 1.0):
            client.log(loss=loss)
            client.step()
        client.flush()
        assert aggregator.take().metrics == []  # queued, not yet taken in
        rx.drain_rest()
        tick = aggregator.take()
        assert sorted(m[4] for m in tick.metrics) == [1.0, 2.0, 3.0]
    finally:
        rx.close()
