"""Textual's Linux driver, with an input thread that sleeps until there is something to read.

Textual's input thread wakes ten times a second to check for input and for a half-read escape
sequence's timeout (a lone Esc). Idle, that was 0.13 points of a core in a tmux window: a
tenth of the whole UI's cost. Here the thread blocks in ``select`` until the terminal has input
or the driver stops (a byte on a pipe of its own), and polls at Textual's 0.1 s only while the
parser waits for the rest of a sequence, so keys, the Esc timeout and everything the parser
produces are exactly Textual's.

Output never blocks the app for ever either. Textual's output thread dies on the first write
to a closed terminal (EIO after a hangup) and leaves its bounded queue to fill; the app's next
write then waited on it for good, and a SIGCONT (which the kernel sends with the hangup) had
already given the driver a new output thread nobody would wait for. Here a write to an output
thread that is gone is dropped, and stopping it does not wait for it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
from codecs import getincrementaldecoder

from textual._loop import loop_last
from textual._parser import ParseError
from textual._xterm_parser import XTermParser
from textual.driver import Driver
from textual.drivers.linux_driver import LinuxDriver

#: How often the thread polls while the parser waits for the rest of a sequence (Textual's).
PENDING_POLL_S = 0.1
#: How often a write waiting on a full output queue checks that its output thread still lives.
OUTPUT_POLL_S = 0.2


class QuietLinuxDriver(LinuxDriver):
    """Input is read as in Textual's driver; only the waiting between inputs differs."""

    _wake: int | None = None

    def run_input_thread(self) -> None:
        """Wait for input (or the stop) and dispatch events, like ``LinuxDriver``'s own."""
        wake_read, self._wake = os.pipe()
        selector = selectors.SelectSelector()
        selector.register(self.fileno, selectors.EVENT_READ)
        selector.register(wake_read, selectors.EVENT_READ)
        fileno = self.fileno
        parser = XTermParser(self._debug)
        decode = getincrementaldecoder("utf-8")().decode

        def process(events: list[tuple[selectors.SelectorKey, int]], final: bool = False) -> bool:
            """Feed what the terminal sent; False once the stop was asked for."""
            running = True
            for last, (key, mask) in loop_last(events):
                if key.fd == wake_read:
                    running = False
                elif mask & selectors.EVENT_READ:
                    try:
                        raw = os.read(fileno, 1024 * 4)
                    except OSError:  # EIO: the terminal is gone (a closed window, a hangup)
                        raw = b""
                    if not raw:  # end of input: reading again would spin, never block
                        return False
                    data = decode(raw, final=final and last)
                    for event in parser.feed(data):
                        self.process_message(event)
            for event in parser.tick():
                self.process_message(event)
            return running

        try:
            while not self.exit_event.is_set():
                pending = parser._timeout_time is not None  # a sequence is half read
                if not process(selector.select(PENDING_POLL_S if pending else None)):
                    break
            selector.unregister(self.fileno)
            process(selector.select(PENDING_POLL_S), final=True)
        finally:
            selector.close()
            wake, self._wake = self._wake, None
            for fd in (wake_read, wake):
                with contextlib.suppress(OSError, TypeError):
                    os.close(fd)  # type: ignore[arg-type]
            with contextlib.suppress(EOFError, ParseError):
                for _ in parser.feed(""):
                    pass

    def write(self, data: str) -> None:
        """Textual's write, except that output for a terminal that is gone (its output thread
        died, EIO) is dropped instead of waiting on the thread's full queue for ever."""
        while (writer := self._writer_thread) is not None and writer.is_alive():
            pending = getattr(writer, "_queue", None)
            if pending is None:  # another Textual: its own write
                writer.write(data)
                return
            with contextlib.suppress(queue.Full):
                pending.put(data, timeout=OUTPUT_POLL_S)
                return

    def close(self) -> None:
        """Stop the output thread, unless it is already gone (stopping it would wait)."""
        writer = self._writer_thread
        if writer is not None and writer.is_alive():
            super().close()

    def disable_input(self) -> None:
        """Wake the input thread so it sees the stop at once (it no longer polls)."""
        if self._wake is not None and not self.exit_event.is_set():
            with contextlib.suppress(OSError):
                os.write(self._wake, b"\0")
        super().disable_input()


def quiet(driver_class: type[Driver]) -> type[Driver]:
    """The quiet driver where Textual would use its Linux driver; any other one unchanged."""
    return QuietLinuxDriver if driver_class is LinuxDriver else driver_class
