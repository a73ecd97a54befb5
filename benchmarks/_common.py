"""Shared helpers for the benchmark scripts: a real process tree, timing, result tables."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

TREE_SCRIPT = """
import os, sys, time
n = int(sys.argv[1])
kids = []
for _ in range(n - 1):
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    kids.append(pid)
print("ready", flush=True)
time.sleep(3600)
"""


@contextmanager
def process_tree(size: int = 32) -> Iterator[int]:
    """A real tree of ``size`` sleeping processes (root + children); yields the root pid."""
    root = subprocess.Popen(
        [sys.executable, "-c", TREE_SCRIPT, str(size)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert root.stdout.readline().strip() == "ready"
    try:
        yield root.pid
    finally:
        import os
        import signal

        os.killpg(root.pid, signal.SIGKILL)
        root.wait()


def cpu_per_call(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    """Process CPU seconds per call of ``fn`` (all threads of this process)."""
    for _ in range(warmup):
        fn()
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    print(f"\n{title}")
    print(f"  {'measure':52} {'value':>14} {'target':>10}  result")
    for name, value, target, result in rows:
        print(f"  {name:52} {value:>14} {target:>10}  {result}")
