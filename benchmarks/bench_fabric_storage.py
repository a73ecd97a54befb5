"""CPU of the fabric and storage sources per tick against bare reads of the same files.

A fake tree (``collectors/sim/fabric_storage/tree.py``) holds 8 InfiniBand / RoCE ports (64-bit
``counters_ext``, four with ``hw_counters``), 4 network interfaces and a job with 6 mounts (NFS
v3, NFS v4.2, Lustre, three local filesystems on NVMe). Between ticks (untimed) the job's
traffic advances every port's data, packet, wait and congestion counters; on each NFS mount what
a busy client's ``mountstats`` moves in a second (``age``, ``events``, ``xprt``, the ``bytes``
data counters, and READ, WRITE, GETATTR, ACCESS and LOOKUP of its 22 (v3) or 63 (v4.2)
operations, COMMIT every 10th tick: the other lines stay as they were, as on a real client);
the Lustre writes and the block devices. In interleaved rounds, this process
measures with ``time.process_time()``:

* sources: ``FabricCollector.collect`` + ``StorageCollector.collect`` (discovery checks,
  every read, parsing, wrap-aware counters, NFS per-op averages, columnar batches);
* bare: the same syscalls the sources made over one rescan period (recorded once: each file
  opened, read as many times with the same sizes and closed, each directory listed, each
  link read, each path stat'ed), replayed tick by tick; nothing parsed.

Both sides run in turns (sources, bare, sources, bare ...) so the rest of the machine's load
spreads over both; the ratio is taken per round and reported as min / median / max. Exits 1
on a MISS (median above the target) or if it cannot measure.

    python benchmarks/bench_fabric_storage.py [--rounds 10] [--ticks 50] [--quick]
"""

from __future__ import annotations

import argparse
import builtins
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.source import CollectContext  # noqa: E402
from benchmarks._common import Report, fail, ratios, spread  # noqa: E402
from collectors.fabric.collector import FabricCollector  # noqa: E402
from collectors.sim.fabric_storage.tree import FabricTree, SimPort, StorageTree  # noqa: E402
from collectors.storage.collector import StorageCollector  # noqa: E402

TARGET = 1.3
PID = 4242
RESCAN_TICKS = 5
#: NFS operations moved each tick (op, calls, bytes sent, bytes received); COMMIT every 10th.
NFS_MOVES = (("READ", 100, 14000, 100 * 1048576), ("WRITE", 2, 2 * 1048576, 300),
             ("GETATTR", 40, 5600, 9600), ("ACCESS", 50, 7000, 6000), ("LOOKUP", 30, 4800, 7800),
             ("COMMIT", 1, 140, 180))  # fmt: skip
#: What the job moves between ticks, printed with the results.
CHANGES = (
    "per tick: every port's data, packet, xmit_wait and (RoCE) CNP counters; per NFS mount "
    "the age, events, xprt and bytes lines and 5 of its 22 / 63 operations (READ, WRITE, "
    "GETATTR, ACCESS, LOOKUP; COMMIT every 10th tick); Lustre write_bytes and write; every "
    "NVMe stat line; the job's io"
)


class Workload:
    """The fake node and a training job's traffic: every counter the job moves advances a tick."""

    def __init__(self, root: Path) -> None:
        self.fabric = FabricTree(root / "sys")
        for i in range(8):
            roce = i >= 4
            self.fabric.add_port(
                SimPort(
                    f"mlx5_{i}", 1, link_layer="Ethernet" if roce else "InfiniBand",
                    rx_bytes=10**12 + i, tx_bytes=10**12, hw={} if roce else None,
                )
            )  # fmt: skip
        for name in ("eth0", "ens1f0", "ens1f1", "bond0"):
            self.fabric.interface(name, 100000)
        self.ticks = 0
        self.storage = StorageTree(root / "proc", root / "sys", pid=PID)
        self.mounts = []
        for m, files in (
            (self.storage.nfs("/mnt/home", version=3), ("/mnt/home/u/train.py",)),
            (self.storage.nfs("/mnt/data", version=4), ("/mnt/data/a.tar", "/mnt/data/b.tar")),
            (self.storage.lustre("/lustre/scratch"), ("/lustre/scratch/ckpt.pt",)),
            (self.storage.local("/local0", block="nvme0n1"), ("/local0/x",)),
            (self.storage.local("/local1", block="nvme1n1"), ("/local1/x",)),
            (self.storage.local("/local2", block="nvme2n1"), ("/local2/x",)),
        ):
            m.files = files
            self.mounts.append(m)
        self.write()

    def advance(self) -> None:
        """One second of the job: traffic on every port, reads and writes on every mount."""
        for p in self.fabric.ports:
            p.rx_bytes += 20_000_000_000
            p.tx_bytes += 20_000_000_000
            p.rx_packets += 5_000_000
            p.tx_packets += 5_000_000
            p.xmit_wait += 1000
            if p.hw is not None:
                p.hw["np_cnp_sent"] = p.hw.get("np_cnp_sent", 0) + 10
                p.hw["rp_cnp_handled"] = p.hw.get("rp_cnp_handled", 0) + 10
        self.ticks += 1
        for m in self.mounts:
            if m.ops:  # NFS: what a busy client's mountstats moves in a second (see CHANGES)
                for op, n, sent, recv in NFS_MOVES:
                    v = m.ops.get(op)
                    if v is not None and (op != "COMMIT" or self.ticks % 10 == 0):
                        v[0] += n
                        v[1] += n
                        v[3] += sent
                        v[4] += recv
                        v[5] += n // 10
                        v[6] += n * 3 // 2
                        v[7] += n * 2
                b = m.nfs_bytes  # normal, server and page counts: read every tick, write too
                b[0] += 100 * 1048576
                b[1] += 2 * 1048576
                b[4] += 100 * 1048576
                b[5] += 2 * 1048576
                b[6] += 25600
                b[7] += 512
                m.nfs_age += 1
                for i, step in ((0, 40), (1, 300), (4, 5), (5, 30), (6, 50), (9, 25600)):
                    m.nfs_events[i] += step
                for i, step in ((5, 505), (6, 505), (8, 2000), (9, 40)):
                    m.nfs_xprt[i] += step
            if m.llite:
                m.llite["write_bytes"][0] += 10
                m.llite["write_bytes"][1] += 10 * 4194304
                m.llite["write"][0] += 10
                m.llite["write"][1] += 20000
            if m.block:
                for i, step in ((0, 100), (2, 204800), (3, 150), (9, 500), (10, 900)):
                    m.stat[i] += step
        self.storage.rchar += 100 * 1048576
        self.write()

    def write(self) -> None:
        self.fabric.write()
        self.storage.write()


Syscall = tuple[str, str, tuple[int, ...]]


def record_syscalls(tick: Callable[[], object]) -> list[Syscall]:
    """The (op, path, read sizes) the sources make in one tick: open (and the size asked of
    each ``os.read`` call on it, none if read through ``open()``), listdir, readlink, stat."""
    seen: list[Syscall] = []
    reads: dict[int, int] = {}  # fd → its entry in seen
    real_open, real_bopen, real_listdir, real_stat = os.open, builtins.open, os.listdir, os.stat
    real_readlink, real_read = os.readlink, os.read

    def rl(path, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(("readlink", os.fspath(path), ()))
        return real_readlink(path, *a, **k)

    def o(path, *a, **k):  # type: ignore[no-untyped-def]
        fd = real_open(path, *a, **k)
        reads[fd] = len(seen)
        seen.append(("read", os.fspath(path), ()))
        return fd

    def r(fd, n):  # type: ignore[no-untyped-def]
        at = reads.get(fd)
        if at is not None:
            op, path, sizes = seen[at]
            seen[at] = (op, path, (*sizes, n))
        return real_read(fd, n)

    def bo(path, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(("read", os.fspath(path), ()))
        return real_bopen(path, *a, **k)

    def ls(path="."):  # type: ignore[no-untyped-def]
        seen.append(("listdir", os.fspath(path), ()))
        return real_listdir(path)

    def st(path, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(("stat", os.fspath(path), ()))
        return real_stat(path, *a, **k)

    os.open, builtins.open, os.listdir, os.stat = o, bo, ls, st  # type: ignore[assignment]
    os.readlink, os.read = rl, r  # type: ignore[assignment]
    try:
        tick()
    finally:
        os.open, builtins.open, os.listdir, os.stat = real_open, real_bopen, real_listdir, real_stat
        os.readlink, os.read = real_readlink, real_read
    return seen


def bare_tick(ops: list[Syscall]) -> int:
    n = 0
    for op, path, sizes in ops:
        try:
            if op == "read":  # the sources' reads, sizes and all (through open(): until short)
                fd = os.open(path, os.O_RDONLY)
                try:
                    if sizes:
                        for size in sizes:
                            n += len(os.read(fd, size))
                    else:
                        while len(chunk := os.read(fd, 65536)) == 65536:
                            n += len(chunk)
                        n += len(chunk)
                finally:
                    os.close(fd)
            elif op == "listdir":
                n += len(os.listdir(path))
            elif op == "readlink":
                n += len(os.readlink(path))
            else:
                os.stat(path)
        except OSError:
            pass
    return n


def per_tick(fn: Callable[[], object], ticks: int, workload: Workload) -> float:
    """CPU seconds of ``fn`` per tick; the workload advances between ticks, untimed."""
    spent = 0.0
    for _ in range(ticks):
        workload.advance()
        start = time.process_time()
        fn()
        spent += time.process_time() - start
    return spent / ticks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds (default 10, at least 3)")
    parser.add_argument("--ticks", type=int, default=50, help="ticks per side and round (50)")
    parser.add_argument("--quick", action="store_true", help="5 rounds of 20 ticks")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.ticks = 5, 20
    if args.rounds < 3:
        raise SystemExit("benchmarks need at least 3 rounds (min / median / max)")
    try:
        return _run(args)
    except (OSError, AssertionError, StopIteration) as exc:
        return fail(exc)


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-fabric-storage-") as tmp:
        root = Path(tmp)
        workload = Workload(root)
        ctx = CollectContext(
            root_pid=PID,
            job_pids=lambda: frozenset({PID}),
            sys_root=str(root / "sys"),
            proc_root=str(root / "proc"),
        )
        fabric, storage = FabricCollector(), StorageCollector()
        fabric.start(ctx)
        storage.start(ctx)
        clock = [time.time()]

        def sources() -> int:
            clock[0] += 1.0  # simulated 1 s ticks: the storage rescan runs every 5th tick
            return len(fabric.collect(clock[0])) + len(storage.collect(clock[0]))

        samples = sources()  # discovery
        # one rescan period of ticks (the storage source maps fds to mounts every 5 s)
        period = []
        for _ in range(RESCAN_TICKS):
            workload.advance()
            period.append(record_syscalls(sources))
        assert len(storage.mounts) == 6 and len(fabric._ports) == 8, "tree not discovered"
        turn = [0]

        def bare() -> int:
            turn[0] += 1
            return bare_tick(period[turn[0] % RESCAN_TICKS])

        bare()
        source_s, bare_s = [], []
        for _ in range(args.rounds):
            source_s.append(per_tick(sources, args.ticks, workload))
            bare_s.append(per_tick(bare, args.ticks, workload))
        samples = sources()

    per_round = ratios(source_s, bare_s)
    ops = [op for tick in period for op in tick]
    reads = sum(1 for op, _, _ in ops if op == "read") / RESCAN_TICKS
    calls = sum(max(len(n), 1) for op, _, n in ops if op == "read") / RESCAN_TICKS
    others = len(ops) / RESCAN_TICKS - reads
    report = Report(
        f"8 IB/RoCE ports + 4 NICs, 6 mounts (2 NFS, Lustre, 3 NVMe): {samples} samples/tick,"
        f" {reads:.0f} files opened ({calls:.0f} reads) + {others:.0f} listdir/readlink/stat"
        " per tick on average;"
        f" CPU per tick over {args.rounds} rounds of {args.ticks} ticks; {CHANGES}"
    )
    report.side(
        "sources",
        "FabricCollector + StorageCollector .collect (1 s simulated ticks, rescan every 5 s): "
        "reads, parsing, unwrapping, NFS per-op averages, batches",
    )
    report.side(
        "bare",
        "the same syscalls, recorded over one 5-tick rescan period and replayed in turn: "
        "open, as many reads of the same sizes, close; listdir, readlink, stat; nothing parsed",
    )
    report.info("sources, ms per tick", spread([x * 1e3 for x in source_s], "{:.3f}"))
    report.info("bare reads, ms per tick", spread([x * 1e3 for x in bare_s], "{:.3f}"))
    median = statistics.median(per_round)
    report.target("sources / bare", spread(per_round), f"<={TARGET}x", median <= TARGET)
    return report.print()


if __name__ == "__main__":
    sys.exit(main())
