"""The storage trackers give the values the reference trackers gave, over randomized replays.

The trackers were rewritten for fewer Python steps per tick (Dec 2026); the previous ones are
kept in :mod:`tests.collectors.storage_reference`. Each replay feeds both the same random
readings — counters moving, remounts (fields going back), operations appearing and vanishing,
eight-field and unreadable lines, absent and junk fields, files unchanged between ticks — and
compares every tick's rows (entity, metric, value), order aside. The NFS tracker parses only
the lines that changed since the last tick; one replay also holds its operations' totals
against a full parse of every reading (``parse_mountstats``), as lines stay, flip back and
forth, and sections and operations reorder.
"""

from __future__ import annotations

import random

import pytest

from agent.catalog.storage import OP_PREFIX
from collectors.storage import block, lustre, nfs
from collectors.storage.rows import Rows
from tests.collectors import storage_reference as ref

OPS = ["NULL", "GETATTR", "SETATTR", "LOOKUP", "ACCESS", "READ", "WRITE", "COMMIT", "READDIR",
       "FSSTAT", "OPEN", "CLOSE", "RENAME", "LAYOUTGET", "SEQUENCE"]  # fmt: skip


def _rows(rows: Rows) -> list[tuple[str, str, float]]:
    entities = [e for seg in rows.segments for e in seg[0]]
    metrics = [m for seg in rows.segments for m in seg[1]]
    assert len(entities) == len(rows.values)
    return sorted(zip(entities, metrics, rows.values))


def _step(rng: random.Random, v: int) -> int:
    r = rng.random()
    if r < 0.03:
        return rng.randrange(0, 50)  # remount: back to a small value
    if r < 0.5:
        return v
    return v + rng.randrange(0, 5000)


def _nfs_text(rng: random.Random, state: dict, point: str) -> bytes:
    """A ``mountstats`` file with this mount's section between two others."""
    ops = state["ops"]
    if rng.random() < 0.05:  # an operation appears or vanishes
        name = rng.choice(OPS)
        if name in ops:
            del ops[name]
        else:
            ops[name] = [0] * 9
    for v in ops.values():
        if rng.random() < 0.4:
            v[:] = [_step(rng, x) for x in v]
    state["bytes"] = [_step(rng, x) for x in state["bytes"]]
    lines = []
    for name, v in ops.items():
        r = rng.random()
        fields = v[:8] if r < 0.05 else v  # a kernel before 4.18: eight fields
        text = " ".join(map(str, fields))
        if r > 0.98:
            text = text.replace(str(fields[0]), "x", 1)  # unreadable
        lines.append(f"\t{name:>12}: {text}")
    numbers = " ".join(map(str, state["bytes"][: rng.choice((8, 8, 8, 4))]))
    bytes_line = [] if rng.random() < 0.03 else [f"\tbytes:\t{numbers}"]
    section = [f"device 10.0.0.1:/x mounted on {point} with fstype nfs4 statvers=1.1",
               "\tage:\t1", *bytes_line, "\tper-op statistics", *lines]  # fmt: skip
    others = ("device proc mounted on /proc with fstype proc",
              "device /dev/sda1 mounted on /local with fstype ext4")  # fmt: skip
    return "\n".join([others[0], *section, others[1], ""]).encode()


@pytest.mark.parametrize("seed", range(6))
def test_nfs_tracker_gives_the_reference_trackers_values_over_a_randomized_replay(seed):
    rng = random.Random(seed)
    state = {"ops": {n: [0] * 9 for n in rng.sample(OPS, 8)}, "bytes": [0] * 8}
    new, old = nfs.NfsTracker("mount:/m", "/m"), ref.NfsTracker("mount:/m", "/m")
    head = None
    for _ in range(2000):
        text = _nfs_text(rng, state, "/m")
        head = head or nfs.find_heads(text)["/m"][0]
        new.head = old.head = head
        a, b = Rows(), Rows()
        assert new.take(a, text)
        section = old.locate(text)
        assert section is not None
        old.sample(b, section)
        assert _rows(a) == _rows(b)


def _llite_text(rng: random.Random, counters: dict[str, list[int]]) -> bytes:
    lines = [f"snapshot_time             {rng.random() * 1e9:.9f} secs.nsecs"]
    for name, v in counters.items():
        if rng.random() < 0.4:
            v[:] = [_step(rng, x) for x in v]
        r = rng.random()
        if r < 0.05 or v[0] == 0:
            continue  # absent (Lustre leaves out what never happened)
        tail = f"1 {v[1]} {v[1]} {v[1] * 2}"
        if r < 0.08:
            tail = "1 2"  # no sum
        elif r < 0.1:
            tail = f"1 {v[1]} {v[1]}x {v[1]}"  # junk sum
        word = "samples" if r < 0.97 else "sample"
        lines.append(f"{name:<26}{v[0]} {word} [usecs] {tail}")
    rng.shuffle(lines)
    return ("\n".join(lines) + ("\n" if rng.random() < 0.9 else "")).encode()


@pytest.mark.parametrize("seed", range(6))
def test_lustre_tracker_gives_the_reference_trackers_values_over_a_randomized_replay(seed):
    rng = random.Random(seed)
    counters = {n: [0, 0] for n in ("read_bytes", "write_bytes", "read", "write", "open")}
    new, old = lustre.LustreTracker("mount:/l"), ref.LustreTracker("mount:/l")
    text = b""
    for _ in range(2000):
        if rng.random() < 0.8:
            text = _llite_text(rng, counters)
        a, b = Rows(), Rows()
        new.sample(a, text)
        old.sample(b, text)
        assert _rows(a) == _rows(b)
    assert lustre.pick_llite(text) == ref.pick_llite(text)


@pytest.mark.parametrize("seed", range(6))
def test_block_tracker_gives_the_reference_trackers_values_over_a_randomized_replay(seed):
    rng = random.Random(seed)
    stat = [0] * 17
    new, old = block.BlockTracker("mount:/b"), ref.BlockTracker("mount:/b")
    data, now = b"", 1000.0
    for _ in range(2000):
        if rng.random() < 0.8:
            stat = [_step(rng, x) for x in stat]
            fields = stat[: rng.choice((17, 17, 17, 15, 11, 10))]
            data = (" ".join(f"{v:8d}" for v in fields) + "\n").encode()
            if rng.random() < 0.02:
                data = b"garbage " + data
        now += rng.choice((1.0, 1.0, 0.5, 0.0, -1.0))
        a, b = Rows(), Rows()
        new.sample(a, data, now)
        old.sample(b, data, now)
        assert _rows(a) == _rows(b)


def _section(point: str, ops: dict[str, list[int]], order: list[str], numbers: list[int]) -> str:
    lines = [f"device 10.0.0.1:/x{point} mounted on {point} with fstype nfs4 statvers=1.1",
             "\tage:\t1", "\tbytes:\t" + " ".join(map(str, numbers)), "\tper-op statistics"]  # fmt: skip
    lines += [f"\t{name:>12}: " + " ".join(map(str, ops[name])) for name in order]
    return "\n".join(lines)


class _FromScratch:
    """Every operation's totals from a full parse of each reading (no changed-lines shortcut):
    a field that goes back counts on from its new value."""

    def __init__(self) -> None:
        self.raw: dict[str, tuple[int, ...]] = {}
        self.total: dict[str, list[int]] = {}

    def take(self, ops: dict[str, tuple[int, ...]]) -> None:
        for name, cur in ops.items():
            raw = self.raw.get(name)
            tot = self.total.setdefault(name, [0, 0])
            for i in (0, 1):  # ops, transmissions
                tot[i] += cur[i] if raw is None or cur[i] < raw[i] else cur[i] - raw[i]
            self.raw[name] = cur

    def rows(self, point: str) -> dict[tuple[str, str], float]:
        out = {(f"mount:{point}", "fs.ops"): sum(t[0] for t in self.total.values()),
               (f"mount:{point}", "fs.retransmits"):
                   sum(max(t[1] - t[0], 0) for t in self.total.values())}  # fmt: skip
        for name, (n, trans) in self.total.items():
            if n and name in nfs.REPORTED_OPS:
                out[(f"{OP_PREFIX}{name}@{point}", "fs.op.count")] = n
                out[(f"{OP_PREFIX}{name}@{point}", "fs.op.retransmits")] = max(trans - n, 0)
        return out


@pytest.mark.parametrize("seed", range(6))
def test_nfs_changed_lines_path_gives_the_full_parse_values_as_lines_stay_flip_and_sections_reorder(
    seed,
):
    """Three NFS mounts in one file: ticks where nothing changes, a few lines moving, lines
    flipping back and forth between two readings, sections and operations reordering. Each
    tick every mount's rows equal the reference tracker's, and its totals a full parse's."""
    rng = random.Random(seed)
    points = ["/m0", "/m1", "/m2"]
    ops = {p: {n: [rng.randrange(0, 1000) for _ in range(9)] for n in OPS} for p in points}
    order = {p: list(OPS) for p in points}
    numbers = {p: [0] * 8 for p in points}
    flip = {p: {n: (list(v), [x + 7 for x in v]) for n, v in rng.sample(sorted(ops[p].items()), 2)}
            for p in points}  # fmt: skip
    new = {p: nfs.NfsTracker(f"mount:{p}", p) for p in points}
    old = {p: ref.NfsTracker(f"mount:{p}", p) for p in points}
    scratch = {p: _FromScratch() for p in points}
    text = b""
    for tick in range(600):
        r = rng.random()
        if r < 0.2:
            pass  # nothing moved: the same file again
        else:
            for p in points:
                for name in rng.sample(OPS, rng.choice((1, 2, 5))):  # a few lines move
                    v = ops[p][name]
                    v[:] = [x + rng.randrange(0, 300) for x in v]
                for name, (a, b) in flip[p].items():  # back and forth: a counter going back
                    ops[p][name][:] = a if tick % 2 else b
                numbers[p][4] += rng.randrange(0, 10**6)
                if rng.random() < 0.05:
                    rng.shuffle(order[p])  # the operations in another order
            if rng.random() < 0.1:
                rng.shuffle(points)  # the sections in another order
            sections = [_section(p, ops[p], order[p], numbers[p]) for p in points]
            text = ("device proc mounted on /proc with fstype proc\n"
                    + "\n".join(sections) + "\n").encode()  # fmt: skip
        heads = nfs.find_heads(text)
        full = nfs.parse_mountstats(text.decode())
        for p in points:
            new[p].head = old[p].head = heads[p][0]
            a, b = Rows(), Rows()
            assert new[p].take(a, text)
            section = old[p].locate(text)
            assert section is not None
            old[p].sample(b, section)
            assert _rows(a) == _rows(b)
            scratch[p].take(full[p].ops)
            got = {(e, m): v for e, m, v in _rows(a)}
            want = scratch[p].rows(p)
            assert {k: got.get(k) for k in want} == want
