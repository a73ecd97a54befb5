"""The quiet driver's output after the terminal is gone: writes are dropped and the driver
closes, where Textual's driver waited for ever on the dead output thread's full queue (an
agent left behind after its terminal closed)."""

from __future__ import annotations

import asyncio
import errno
import signal
import threading

import pytest
from textual.app import App
from textual.drivers._writer_thread import MAX_QUEUED_WRITES, WriterThread

from tui.driver import QuietLinuxDriver


class ClosedTerminal:
    """A terminal after a hangup: every write fails with EIO."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise OSError(errno.EIO, "Input/output error")

    def flush(self) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def fileno(self) -> int:
        return 2


class SlowTerminal:
    """A terminal that takes its time but takes everything."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.gate = threading.Event()

    def write(self, text: str) -> int:
        self.gate.wait(5)
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return 2


def _driver(file) -> QuietLinuxDriver:
    """A driver in application mode as far as output goes (its own output thread on ``file``);
    the job-control handlers its constructor installs are put back as they were."""
    kept = {s: signal.getsignal(s) for s in (signal.SIGTSTP, signal.SIGCONT)}

    async def make() -> QuietLinuxDriver:
        return QuietLinuxDriver(App(), mouse=False, size=(80, 24))

    try:
        driver = asyncio.run(make())
    finally:
        for sig, handler in kept.items():
            signal.signal(sig, handler)
    driver._writer_thread = WriterThread(file)
    driver._writer_thread.start()
    return driver


def _in_time(work, seconds: float = 5.0) -> bool:
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_writes_to_a_closed_terminal_are_dropped_and_the_driver_still_closes():
    terminal = ClosedTerminal()
    driver = _driver(terminal)

    def write_a_lot_then_close() -> None:
        for _ in range(3 * MAX_QUEUED_WRITES):  # more than the output queue holds
            driver.write("\x1b[?1000l")
        driver.close()

    assert _in_time(write_a_lot_then_close)
    assert terminal.writes == 1  # the output thread died on its first write
    assert not driver._writer_thread.is_alive()


def test_a_slow_terminal_still_gets_every_write_in_order():
    terminal = SlowTerminal()
    driver = _driver(terminal)
    writes = [f"line {i}\n" for i in range(2 * MAX_QUEUED_WRITES)]

    def write_all() -> None:
        for text in writes:
            driver.write(text)

    writer = threading.Thread(target=write_all, daemon=True)
    writer.start()
    writer.join(0.5)
    assert writer.is_alive()  # the queue is full: the write waits, as Textual's does
    terminal.gate.set()
    writer.join(5)
    assert not writer.is_alive()
    assert _in_time(driver.close)
    assert terminal.text == writes
