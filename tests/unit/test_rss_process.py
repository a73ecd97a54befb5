"""What the agent's process keeps resident besides its work: no OpenSSL without TLS, no DuckDB
async I/O threads, few malloc arenas. Each is checked in a real child process beside a control
run without the change, so the test can fail."""

from __future__ import annotations

from tests.helpers import run_python


def _child(code: str) -> str:
    done = run_python(code)
    return done.stdout + done.stderr


def test_agent_process_maps_no_libcrypto_without_tls():
    maps = "import sys; print(open('/proc/self/maps').read())"
    control = _child(f"import duckdb, hashlib; {maps}")
    assert "libcrypto" in control  # DuckDB's package alone pulls OpenSSL in through hashlib
    agent = _child(f"import agent.app.session, agent.store, duckdb, hashlib, secrets; {maps}")
    assert "libcrypto" not in agent
    digests = _child("import agent, hashlib; print(hashlib.sha256(b'x').hexdigest())")
    assert digests.strip() == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


def test_agent_database_runs_no_async_io_threads(tmp_path):
    count = "import os; print('threads', len(os.listdir('/proc/self/task')))"
    control = _child(f"import duckdb; c = duckdb.connect({str(tmp_path / 'c.duckdb')!r}); {count}")
    agent = _child(
        f"from agent.store import connect; c = connect({str(tmp_path / 'a.duckdb')!r})\n"
        "print(c.execute(\"SELECT current_setting('async_threads')\").fetchall()[0][0])\n"
        f"{count}"
    )
    threads = lambda out: int(out.split("threads ")[1].split()[0])  # noqa: E731
    assert threads(control) >= threads(agent) + 8
    assert agent.split()[0] == "0"


_ARENAS = """
    import ctypes, threading
    from agent.app.os_process import limit_malloc_arenas
    if {cap}:
        assert limit_malloc_arenas(2)
    go = threading.Barrier(8)
    def work():
        go.wait()
        keep = [bytearray(64 * 1024) for _ in range(20)]  # malloc'd, below the mmap threshold
        go.wait()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    ctypes.CDLL(None).malloc_stats()
"""


def test_malloc_arenas_are_capped_for_the_agents_threads():
    uncapped = _child(_ARENAS.format(cap=False)).count("Arena ")
    capped = _child(_ARENAS.format(cap=True)).count("Arena ")
    assert capped <= 2 < uncapped
