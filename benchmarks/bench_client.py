"""What one ``accelwatch.log()`` call costs the training loop, with an agent listening and with none.

One measuring process runs under the real agent (``accelwatch run --headless -- python
benchmarks/bench_client.py --child``): the agent binds its socket and names it in the child's
environment, exactly as for a user's job. In that process, each round times, in turn:

* empty: ``empty(loss=.., lr=.., grad_norm=.., acc=.., tokens=..)``, a Python function with the
  client's signature and an empty body: the cost of the call itself (argument passing, kwargs
  dict), the baseline every ratio divides by;
* agent: ``Client.log`` with the same five float metrics, sending to the real agent's socket:
  the type check, the buffered tuple, and every 64 calls (or 50 ms) one marshal-encoded
  ``sendto`` of the batch. A tight loop logs far faster than the agent keeps (it caps what a
  tick holds); once its queue is full the client drops without encoding, counted. The share of
  calls that were sent is printed;
* sent: the same client code sending to a bare drain process (``recv`` in a loop, nothing
  else) that takes every datagram: every call pays the full encode-and-send path;
* none: ``Client.log`` of a client that finds no agent (no socket named, no runtime dir):
  what every call costs a script that is not watched;
* dead (info): a client whose named socket does not exist (an agent that died): failed sends
  are retried with backoff, queued bounded and counted.

Each side makes ``--calls`` calls per round (100,000 by default) timed as one block: µs per call
of the calling thread's CPU time (``time.thread_time``: what the call costs the training
thread, whatever else the shared machine runs; wall time is printed too), and the ratio to
``empty`` of the same round, in interleaved rounds reported as min / median / max. A second
pass times every call on its own (``thread_time_ns`` and ``perf_counter_ns`` around the call,
which add ~0.5 µs) for the p99.9 and the maximum: the verdict on CPU time (spikes of our own
code: a batch encoded and sent, a GC pass), wall time printed beside the empty call's (spikes
of a shared machine: preemption).

Targets (issue 12): agent and sent ≤ 5 µs per call, none ≤ 1 µs per call (medians of CPU
time), p99.9 ≤ 100 µs for agent, sent and none. Exits 1 on a MISS.

    python benchmarks/bench_client.py [--rounds 7] [--calls 100000] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import Report, fail, spread  # noqa: E402

TARGET_AGENT_US = 5.0
TARGET_NONE_US = 1.0
TARGET_SPIKE_US = 100.0
METRICS = {"loss": 0.25, "lr": 3e-4, "grad_norm": 1.5, "acc": 0.9, "tokens": 4096.0}


def empty(step=None, **metrics):  # noqa: ANN001, ANN003, ANN201 - the client's signature
    pass


def _block(fn, calls: int) -> tuple[float, float]:
    """(CPU, wall) µs per call of ``calls`` calls of ``fn`` with the five metrics."""
    loss, lr, gn, acc, tok = METRICS.values()
    c0, t0 = time.thread_time(), time.perf_counter()
    for _ in range(calls):
        fn(loss=loss, lr=lr, grad_norm=gn, acc=acc, tokens=tok)
    wall = time.perf_counter() - t0
    return (time.thread_time() - c0) / calls * 1e6, wall / calls * 1e6


DRAIN = """
import signal, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
n = 0
def done(*_):
    print(n, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
while True:
    s.recv(1 << 17)
    n += 1
"""


def _each(fn, calls: int) -> tuple[list[int], list[int]]:
    """(CPU, wall) nanoseconds of every call, timed on its own."""
    loss, lr, gn, acc, tok = METRICS.values()
    cpu_clock, wall_clock = time.thread_time_ns, time.perf_counter_ns
    cpu, wall = [0] * calls, [0] * calls
    for i in range(calls):
        c0, t0 = cpu_clock(), wall_clock()
        fn(loss=loss, lr=lr, grad_norm=gn, acc=acc, tokens=tok)
        t1, c1 = wall_clock(), cpu_clock()
        cpu[i], wall[i] = c1 - c0, t1 - t0
    return cpu, wall


def _tail(ns: list[int]) -> dict[str, float]:
    ns = sorted(ns)
    return {
        "p50_us": ns[len(ns) // 2] / 1e3,
        "p999_us": ns[min(len(ns) - 1, int(len(ns) * 0.999))] / 1e3,
        "max_us": ns[-1] / 1e3,
    }


def child(rounds: int, calls: int) -> int:
    """The measuring process (under the agent): prints one JSON line of results."""
    from accelwatch import _wire
    from accelwatch._client import Client

    named = os.environ.get(_wire.ENV_SOCKET)
    if not named:
        print(json.dumps({"error": "no agent socket in the environment"}))
        return 1
    nowhere = tempfile.mkdtemp(prefix="aw-bench-none")
    os.rmdir(nowhere)  # a runtime dir that does not exist: nothing to find
    clients = {
        "agent": Client(environ={_wire.ENV_SOCKET: named}),
        "sent": Client(environ={_wire.ENV_SOCKET: os.environ["AW_BENCH_DRAIN"]}),
        "none": Client(environ={_wire.ENV_RUNTIME_DIR: nowhere}),
        "dead": Client(environ={_wire.ENV_SOCKET: nowhere + "/gone.sock"}),
    }
    sides = {"empty": empty, **{name: c.log for name, c in clients.items()}}
    for fn in sides.values():  # warm-up: the agent is found, code paths are hot
        _block(fn, min(calls, 10_000))
    clients["agent"].flush()
    time.sleep(0.2)
    before = {name: c.stats() for name, c in clients.items()}
    blocks: dict[str, list[float]] = {name: [] for name in sides}
    walls: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            cpu, wall = _block(fn, calls)
            blocks[name].append(cpu)
            walls[name].append(wall)
    measured = {name: c.stats()["sent"] - before[name]["sent"] for name, c in clients.items()}
    singles = {}
    for name in ("empty", "agent", "sent", "none"):
        cpu, wall = _each(sides[name], calls)
        singles[name] = {"cpu": _tail(cpu), "wall": _tail(wall)}
    for c in clients.values():
        c.flush()
    time.sleep(0.3)
    stats = {name: c.stats() for name, c in clients.items()}
    for name, n in measured.items():
        stats[name]["sent_measured"] = n
    print(
        json.dumps(
            {"blocks": blocks, "walls": walls, "singles": singles, "stats": stats,
             "gc": gc.isenabled(), "calls": rounds * calls}
        )
    )  # fmt: skip
    return 0


def _stored_values(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT count(*) FROM train_metrics").fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--calls", type=int, default=100_000, help="calls per side and round")
    parser.add_argument("--quick", action="store_true", help="3 rounds (a few seconds)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
    if args.rounds < 3:
        raise SystemExit("benchmarks need at least 3 rounds (min / median / max)")
    if args.child:
        return child(args.rounds, args.calls)
    try:
        with tempfile.TemporaryDirectory() as name:
            db = Path(name) / "bench.duckdb"
            runtime = tempfile.mkdtemp(prefix="awb", dir="/tmp")
            drain_path = os.path.join(runtime, "drain.sock")
            drain = subprocess.Popen(
                [sys.executable, "-c", DRAIN, drain_path], stdout=subprocess.PIPE, text=True
            )
            assert drain.stdout is not None
            if drain.stdout.readline().strip() != "ready":
                raise RuntimeError("the drain process did not start")
            env = {
                **os.environ,
                "ACCELWATCH_RUNTIME_DIR": os.path.join(runtime, "rt"),
                "AW_BENCH_DRAIN": drain_path,
            }
            argv_agent = [sys.executable, "-m", "agent", "run", "--headless", "--db", str(db)]
            out = subprocess.run(
                [*argv_agent, "--", sys.executable, str(Path(__file__).resolve()), "--child",
                 "--rounds", str(args.rounds), "--calls", str(args.calls)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            drain.terminate()
            drained = int((drain.communicate(timeout=10)[0] or "0").split()[-1])
            shutil.rmtree(runtime, ignore_errors=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode != 0 or not lines:
                tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"the measuring process failed (rc {out.returncode}): {tail}")
            got = json.loads(lines[-1])
            if "error" in got:
                raise RuntimeError(got["error"])
            stored = _stored_values(db)
    except Exception as exc:  # one line and exit 1, never a traceback mid-table
        return fail(exc)
    return _report(args, got, stored, drained)


def _report(args: argparse.Namespace, got: dict, stored: int, drained: int) -> int:
    blocks, walls, singles, stats = got["blocks"], got["walls"], got["singles"], got["stats"]
    report = Report(
        f"client: one log() with 5 float metrics, {args.calls:,} calls per side and round, "
        f"{args.rounds} interleaved rounds, under a real `accelwatch run` (GC on: {got['gc']}); "
        "µs of the calling thread's CPU time"
    )
    report.side("empty", "a Python function with log()'s signature and an empty body (baseline)")
    report.side("agent", "Client.log to the real agent's socket (its caps drop most of a flood)")
    report.side("sent", "Client.log to a bare drain process: every call encoded and sent")
    report.side("none", "Client.log with no agent found (no socket named, no runtime dir)")
    report.side("dead", "Client.log to a named socket that does not exist (retries, counted)")
    names = ("empty", "agent", "sent", "none", "dead")
    for name in names:
        report.info(f"{name}: µs per call, wall", spread(walls[name], "{:.3f}"))
    for name in names[1:]:
        ratio = [a / b if b > 0 else float("inf") for a, b in zip(blocks[name], blocks["empty"])]
        report.info(f"{name}: / empty call, CPU (same round)", spread(ratio, "{:.1f}x"))
    report.info("empty: µs per call", spread(blocks["empty"], "{:.3f}"))
    for name, target in (("agent", TARGET_AGENT_US), ("sent", TARGET_AGENT_US),
                         ("none", TARGET_NONE_US)):  # fmt: skip
        report.target(
            f"{name}: µs per call (median of rounds)",
            spread(blocks[name], "{:.3f}"),
            f"<= {target:g}",
            statistics.median(blocks[name]) <= target,
        )
    for name in ("empty", "agent", "sent", "none"):
        w = singles[name]["wall"]
        report.info(
            f"{name}: single calls, wall µs p50 / p99.9 / max",
            f"{w['p50_us']:.2f} / {w['p999_us']:.1f} / {w['max_us']:.0f}",
        )
    for name in ("agent", "sent", "none"):
        c = singles[name]["cpu"]
        report.target(
            f"{name}: p99.9 of single calls, CPU µs (p50 {c['p50_us']:.2f}, max {c['max_us']:.0f})",
            f"{c['p999_us']:.2f}",
            f"<= {TARGET_SPIKE_US:g}",
            c["p999_us"] <= TARGET_SPIKE_US,
        )
    total = got["calls"]
    for name in ("agent", "sent"):
        share = stats[name]["sent_measured"] / total if total else 0.0
        report.info(f"{name}: share of timed calls sent", f"{share:.1%}")
    agent = stats["agent"]
    report.info(
        "agent: values sent / stored by the agent / dropped by the client",
        f"{agent['sent'] * 5:,} / {stored:,} / {agent['dropped'] * 5:,}",
    )
    report.info("sent: datagrams the drain received", f"{drained:,}")
    dead = stats["dead"]
    report.info(
        "dead: messages dropped, send errors", f"{dead['dropped']:,}, {dead['send_errors']}"
    )
    return report.print()


if __name__ == "__main__":
    sys.exit(main())
