"""DuckDB's start-up pages released from the agent's resident set (``agent.app.resident``): only
its code and read-only data mappings that hold clean file pages alone, never RELRO or writable data; a recording after the release records, moves,
analyses and closes as before; skipped, with a debug line, where it cannot be done."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from agent.app import resident
from agent.app.resident import Mapping, parse_smaps, releasable
from tests.helpers import query, xid_scenario

LIB = "/site-packages/_duckdb.cpython-311-x86_64-linux-gnu.so"

SMAPS = f"""\
7f0000000000-7f0000100000 r--p 00000000 fe:00 42     {LIB}
Rss:                1024 kB
Private_Clean:      1024 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
7f0000100000-7f0000400000 r-xp 00100000 fe:00 42     {LIB}
Rss:                3072 kB
Private_Clean:      3072 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me sd
7f0000400000-7f0000500000 r--p 00400000 fe:00 42     {LIB}
Rss:                 600 kB
Private_Dirty:       600 kB
Anonymous:           600 kB
7f0000500000-7f0000510000 rw-p 00500000 fe:00 42     {LIB}
Rss:                  64 kB
Private_Dirty:        64 kB
Anonymous:            64 kB
7f0000600000-7f0000700000 r-xp 00000000 fe:00 43     /usr/lib/libpython3.11.so.1.0
Rss:                 900 kB
Anonymous:             0 kB
7f0000800000-7f0000900000 r-xp 00000000 fe:00 44     {LIB} (deleted)
Rss:                 100 kB
Anonymous:             0 kB
7f0000a00000-7f0000a21000 rw-p 00000000 00:00 0
Rss:                 132 kB
Anonymous:           132 kB
"""


def test_smaps_are_parsed_into_mappings_with_their_resident_and_changed_pages():
    maps = parse_smaps(SMAPS)
    assert [(m.perms, m.rss_kb, m.changed_kb) for m in maps] == [
        ("r--p", 1024, 0),
        ("r-xp", 3072, 0),
        ("r--p", 600, 1200),
        ("rw-p", 64, 128),
        ("r-xp", 900, 0),
        ("r-xp", 100, 0),
        ("rw-p", 132, 132),
    ]
    assert maps[1].start == 0x7F0000100000 and maps[1].end == 0x7F0000400000
    assert maps[5].path == LIB + " (deleted)" and maps[6].path == ""


def test_only_the_librarys_clean_code_and_read_only_data_are_released_never_relro_or_writable():
    chosen, skipped = releasable(parse_smaps(SMAPS), LIB)
    assert [(m.perms, m.start) for m in chosen] == [
        ("r--p", 0x7F0000000000),
        ("r-xp", 0x7F0000100000),
    ]
    # RELRO is read-only too, but its pages are the loader's relocated copies: kept
    assert skipped == ["7f0000400000-7f0000500000: 1200 kB not clean file pages"]


def test_read_only_data_with_a_copy_on_write_page_is_kept():
    relocated = Mapping(0x1000, 0x5000, "r--p", LIB, rss_kb=16, changed_kb=16)
    chosen, skipped = releasable([relocated], LIB)
    assert chosen == [] and "not clean" in skipped[0]


def test_code_with_a_copy_on_write_page_is_kept():
    patched = Mapping(0x1000, 0x5000, "r-xp", LIB, rss_kb=16, changed_kb=4)  # a breakpoint
    chosen, skipped = releasable([patched], LIB)
    assert chosen == [] and "not clean" in skipped[0]


def test_every_shared_library_is_released_with_duckdb_never_a_deleted_one_or_another_file():
    core = "/venv/numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so"
    blas = "/venv/numpy.libs/libscipy_openblas64_-32a4b2a6.so"
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    maps = [
        *parse_smaps(SMAPS),
        Mapping(0x1000, 0x2000, "r-xp", core, rss_kb=4),
        Mapping(0x2000, 0x3000, "r--p", blas, rss_kb=4),
        Mapping(0x3000, 0x4000, "r-xp", libc, rss_kb=4),
        Mapping(0x4000, 0x5000, "r--p", "/usr/lib/locale/C.utf8/LC_CTYPE", rss_kb=4),
        Mapping(0x5000, 0x6000, "r--p", "/venv/numpy/_core/_add_newdocs.py", rss_kb=4),
        Mapping(0x6000, 0x7000, "r-xp", "[vdso]", rss_kb=4),
    ]
    assert resident.shared_libraries(maps) == sorted(
        [LIB, "/usr/lib/libpython3.11.so.1.0", core, blas, libc]
    )  # not "LIB (deleted)", the locale file, a source file or the vdso


def test_release_is_skipped_with_a_debug_line_without_smaps(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="agent.app.resident")
    missing = str(tmp_path / "no-smaps")
    assert resident.release_library_text(LIB, smaps_path=missing) is None
    assert "cannot read" in caplog.text and "code pages kept" in caplog.text


def test_release_is_skipped_with_a_debug_line_without_madvise(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="agent.app.resident")
    smaps = tmp_path / "smaps"
    smaps.write_text(SMAPS)

    def no_madvise():
        raise AttributeError("madvise")

    monkeypatch.setattr(resident, "_madvise", no_madvise)
    assert resident.release_library_text(LIB, smaps_path=str(smaps)) is None
    assert "no madvise here" in caplog.text


_RELEASE = """
    from agent.app.resident import duckdb_library, parse_smaps, release_library_text
    from agent.store import connect
    con = connect({db!r})
    import numpy
    con.execute("CREATE TABLE t AS SELECT range AS a, random() AS b FROM range(100000)")
    con.execute("CHECKPOINT")
    lib = duckdb_library()
    def mine(numpy_too=False):
        return [(m.perms, m.rss_kb, m.changed_kb)
                for m in parse_smaps(open('/proc/self/smaps').read())
                if ("/numpy" in m.path if numpy_too else m.path == lib)]
    before, numpy_before = mine(), mine(True)
    done = release_library_text()
    after, numpy_after = mine(), mine(True)
    total = con.execute("SELECT count(*), sum(a) FROM t").fetchall()[0]
    squares = int(numpy.square(numpy.arange(10)).sum())
    print(json.dumps(dict(before=before, after=after, released=done.released_kb, total=total,
                          numpy_before=numpy_before, numpy_after=numpy_after, squares=squares)))
"""


def test_release_drops_duckdbs_and_numpys_code_and_read_only_pages_not_relro_or_data(tmp_path):
    code = textwrap.dedent(_RELEASE).format(db=str(tmp_path / "r.duckdb"))
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    got = json.loads(out)
    before, after = got["before"], got["after"]

    def clean(m: list) -> bool:
        return m[0] in ("r-xp", "r--p") and m[2] == 0

    code_before = sum(rss for perms, rss, _ in before if perms == "r-xp")
    code_after = sum(rss for perms, rss, _ in after if perms == "r-xp")
    rodata_before = sum(m[1] for m in before if m[0] == "r--p" and clean(m))
    rodata_after = sum(m[1] for m in after if m[0] == "r--p" and clean(m))
    assert code_before > 10_000 and rodata_before > 1_000
    assert got["released"] >= (code_before + rodata_before) * 0.9
    assert code_after <= 256  # nothing ran between the release and this read but the parse
    assert rodata_after <= rodata_before / 2
    relro = [m for m in before if m[0] == "r--p" and not clean(m)]
    assert relro and all(m in after for m in relro)  # the relocated copies stay as they were
    assert [m for m in before if not clean(m)] == [m for m in after if not clean(m)]
    assert got["total"] == [100_000, 100_000 * 99_999 // 2]  # DuckDB runs on after it
    numpy_before = sum(m[1] for m in got["numpy_before"] if clean(m))
    numpy_after = sum(m[1] for m in got["numpy_after"] if clean(m))
    assert numpy_before > 1_000 and numpy_after <= numpy_before / 2  # released with DuckDB's
    kept = [m for m in got["numpy_before"] if not clean(m)]
    assert kept and kept == [m for m in got["numpy_after"] if not clean(m)]
    assert got["squares"] == 285  # numpy runs on after it


_RECORD = """
    import logging, sys
    logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
    for name in list(logging.root.manager.loggerDict):
        if name != "agent.app.resident":
            logging.getLogger(name).setLevel(logging.WARNING)
    import agent.app.resident as resident, agent.store_spans as spans
    resident.RELEASE_AFTER_S = 0.5
    spans.SPAN_TICKS = 10  # moves into spans after the release too
    from agent.app.cli import main
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the release is Linux's madvise")
def test_a_run_after_the_release_records_moves_analyses_and_closes(tmp_path):
    db = tmp_path / "run.duckdb"
    scenario = tmp_path / "xid.toml"
    scenario.write_text(xid_scenario(2))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_RECORD)]
        + ["run", "--headless", "--simulate", str(scenario), "--db", str(db)]
        + ["--interval", "0.1", "--", sys.executable, "-c", "import time; time.sleep(5)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    released = [line for line in done.stderr.splitlines() if "resident: released" in line]
    assert released, done.stderr[-2000:]
    assert int(released[0].split("released ")[1].split()[0]) > 1000  # kB of DuckDB's code
    [(status, ended)] = query(db, "SELECT status, ended IS NOT NULL FROM runs")
    assert (status, ended) == ("finished", True)
    (ticks,) = query(db, "SELECT count(DISTINCT ts) FROM samples WHERE source = 'nvml'")[0]
    assert ticks >= 35  # 5 s at 0.1 s, most of them after the release at 0.5 s
    (spanned,) = query(db, "SELECT count(*) FROM sample_spans")[0]
    assert spanned > 0
    rules = {rule for (rule,) in query(db, "SELECT rule FROM findings")}
    assert "hardware-fault" in rules


def test_the_release_is_called_off_when_the_run_ends_before_it(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(resident, "release_library_text", lambda *a, **k: calls.append("x"))
    from agent.app.session import Session, SessionConfig

    config = SessionConfig(db_path=str(tmp_path / "s.duckdb"), interval=0.1, live_analysis=False)
    session = Session(config)
    session.launch([sys.executable, "-c", "pass"])
    session.wait()
    session.finish()
    timer = session._release
    assert timer is not None and timer.finished.is_set()  # cancelled (or done): never pending
    timer.join(timeout=5)
    assert calls == []  # 15 s had not passed: the finished run never released anything


def test_the_release_runs_once_on_its_own_thread_after_its_delay(monkeypatch):
    import threading

    ran: list[str] = []
    monkeypatch.setattr(
        resident, "release_library_text", lambda: ran.append(threading.current_thread().name)
    )
    timer = resident.release_later(0.05)
    timer.join(timeout=5)
    assert ran == ["accelwatch-resident"]


def test_the_release_keeps_the_pages_when_the_environment_asks(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="agent.app.resident")
    ran: list[int] = []
    monkeypatch.setattr(resident, "release_library_text", lambda: ran.append(1))
    monkeypatch.setenv(resident.KEEP_ENV, "1")
    resident.release_later(0.0).join(timeout=5)
    assert ran == [] and "code pages kept" in caplog.text
    monkeypatch.delenv(resident.KEEP_ENV)
    resident.release_later(0.0).join(timeout=5)
    assert ran == [1]


def test_the_release_repeats_every_interval_until_cancelled(monkeypatch):
    import threading

    ran = threading.Semaphore(0)
    monkeypatch.setattr(resident, "release_library_text", ran.release)
    timer = resident.release_later(0.01, every_s=0.01)
    for _ in range(3):  # the first release and two repeats
        assert ran.acquire(timeout=5)
    timer.cancel()
    timer.join(timeout=5)
    assert not timer.is_alive() and timer.finished.is_set()
    while ran.acquire(blocking=False):  # one may have run while cancel() was called
        pass
    assert not ran.acquire(timeout=0.1)  # none after
