"""The accelwatch screen shared by live recording and replay (subclasses in live.py, replay.py).

Data arrives only through an :class:`agent.reader.Reader`. The reader wakes the app from the
sampler thread with a replaceable :class:`FrameAvailable` message, so a slow terminal skips
stale ticks instead of queueing them; history queries run in thread workers.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.driver import Driver
from textual.events import Resize
from textual.message import Message
from textual.widgets import DataTable, Footer

from agent.catalog import CATALOG
from agent.reader import Frame, Reader
from tui.driver import quiet
from tui.views import accelerator_views, host_view, process_rows, tracked_metrics
from tui.widgets.findings import EvidenceScreen, FindingsTable
from tui.widgets.gpu import GpuCard, GpuPanel
from tui.widgets.header import RunHeader
from tui.widgets.help import HelpScreen
from tui.widgets.host import HostPanel
from tui.widgets.paint import LinePainter
from tui.widgets.processes import ProcessTable
from tui.widgets.timeseries import TimeSeriesScreen

#: Sparkline windows cycled by ``w`` (seconds).
WINDOWS_S = (60.0, 300.0, 900.0)
WIDE_COLUMNS = 120
GRID_COLUMNS = 160
TALL_ROWS = 40
SHORT_ROWS = 30


class FrameAvailable(Message):
    """A new tick exists; only the latest one matters."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FrameAvailable)


class FrameReady(Message):
    """A frame computed off the UI thread (replay); only the latest one matters."""

    def __init__(self, frame: Frame | None) -> None:
        super().__init__()
        self.frame = frame

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FrameReady)


class AccelwatchApp(App[int]):
    """Header, GPU cards, process tree, host, findings; keys in the footer, ``?`` for help."""

    #: Absolute, so subclasses defined elsewhere (tests, benchmarks) find the package's styles.
    CSS_PATH = str(Path(__file__).with_name("app.tcss"))
    TITLE = "accelwatch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit_viewer", "Quit"),
        Binding("ctrl+c", "quit_viewer", "Quit", show=False),  # the terminal's usual stop key
        Binding("question_mark", "help", "Help"),
        Binding("p", "pause", "Pause"),
        Binding(
            "d", "toggle_unused", "Unused GPUs", tooltip="Dim or hide GPUs the job does not use"
        ),
        Binding("s", "sort", "Sort", tooltip="Cycle the process sort: tree, cpu, rss, gpu_mem, io"),
        Binding("f", "focus_findings", "Findings"),
        Binding("g", "graph", "Graph", tooltip="Chart any metric of the selected card or process"),
        Binding("w", "window", "Window", tooltip="Switch the sparkline window: 1, 5, 15 minutes"),
    ]

    def __init__(self, reader: Reader) -> None:
        super().__init__()
        self.reader = reader
        self.window_s = WINDOWS_S[0]
        self.paused = False
        self.frame: Frame | None = None
        self._stale = False
        #: Writes the panels' changed lines at once (tui/widgets/paint.py).
        self.painter = LinePainter(self)
        self._found: tuple[RunHeader, GpuPanel, ProcessTable, HostPanel, FindingsTable] | None = (
            None
        )

    def get_driver_class(self) -> type[Driver]:
        """Textual's driver, with an input thread that does not poll (tui/driver.py)."""
        return quiet(super().get_driver_class())

    # -- layout
    def compose(self) -> ComposeResult:
        yield RunHeader(self.reader.run)
        with Horizontal(id="main"):
            yield GpuPanel()
            with Vertical(id="side"):
                yield ProcessTable()
                yield HostPanel()
        yield from self.compose_extra()
        yield FindingsTable()
        yield Footer(compact=True)

    def compose_extra(self) -> ComposeResult:
        """Hook for subclasses (replay adds its time cursor)."""
        yield from ()

    def on_mount(self) -> None:
        self.header.window_s = self.window_s
        self.reader.track(tracked_metrics())
        self.reader.subscribe(self._wake)
        self.header.show(state=self.state_label())
        self.request_frame()

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.width >= WIDE_COLUMNS, "-wide")
        self.set_class(event.size.width >= GRID_COLUMNS, "-grid")
        self.set_class(event.size.height >= TALL_ROWS, "-tall")
        self.set_class(event.size.width < WIDE_COLUMNS or event.size.height < TALL_ROWS, "-compact")
        short = event.size.height < SHORT_ROWS
        if short != self.has_class("-short"):
            self.set_class(short, "-short")
            self.query_one(GpuPanel).relayout_cards()

    @property
    def header(self) -> RunHeader:
        return self.query_one(RunHeader)

    def state_label(self) -> str:
        return "⏸ PAUSED" if self.paused else "● REC"

    # -- data
    def _wake(self) -> None:
        """Called on the sampler thread: never block, never touch widgets."""
        self.post_message(FrameAvailable())

    def on_frame_available(self, _: FrameAvailable) -> None:
        if self.paused:
            self._stale = True
            return
        self.request_frame()

    def request_frame(self) -> None:
        """Fetch and show the current frame (live frames are in memory: no I/O)."""
        self.apply(self.reader.frame(self.window_s))

    def on_frame_ready(self, message: FrameReady) -> None:
        self.apply(message.frame)

    def apply(self, frame: Frame | None) -> None:
        if frame is None:
            return
        self.frame = frame
        header, gpus, table, host, findings = self._panels()
        with self.painter.batch():  # every panel's changed lines in one terminal write
            header.show(frame)
            gpus.show(accelerator_views(frame), dict(frame.notices))
            table.show(process_rows(frame, table.sort_key))
            host.show(host_view(frame))
        findings.show(frame.findings)

    def _panels(self) -> tuple[RunHeader, GpuPanel, ProcessTable, HostPanel, FindingsTable]:
        """The main screen's panels, found once (a DOM query per panel per tick adds up)."""
        if self._found is None:
            self._found = (
                self.query_one(RunHeader),
                self.query_one(GpuPanel),
                self.query_one(ProcessTable),
                self.query_one(HostPanel),
                self.query_one(FindingsTable),
            )
        return self._found

    def current_ts(self) -> float:
        """The moment on screen (the right edge of charts)."""
        return self.frame.snapshot.ts if self.frame else self.reader.run.started

    # -- actions
    def action_quit_viewer(self) -> None:
        self.exit(0)

    async def action_quit(self) -> None:
        """Textual's own quit (ctrl+q) means the same as ``q``."""
        self.action_quit_viewer()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.header.show(state=self.state_label())
        if not self.paused and self._stale:
            self._stale = False
            self.request_frame()

    def action_toggle_unused(self) -> None:
        self.query_one(GpuPanel).toggle_unused()

    def action_sort(self) -> None:
        self.query_one(ProcessTable).cycle_sort()  # its title shows the new order
        self._reshow_processes()

    def _reshow_processes(self) -> None:
        if self.frame is not None:
            table = self.query_one(ProcessTable)
            table.show(process_rows(self.frame, table.sort_key))

    def action_focus_findings(self) -> None:
        self.query_one(FindingsTable).focus()

    def action_window(self) -> None:
        self.window_s = WINDOWS_S[(WINDOWS_S.index(self.window_s) + 1) % len(WINDOWS_S)]
        self.header.window_s = self.window_s
        self.request_frame()

    def action_help(self) -> None:
        """Keys of the app, then of each of our focusable panels (read from their bindings)."""
        sections = [("", [b for b in self.BINDINGS if isinstance(b, Binding)])]
        seen: set[type] = set()
        for widget in self.screen.query("*"):
            kind = type(widget)
            own = [b for b in kind.__dict__.get("BINDINGS", []) if isinstance(b, Binding)]
            if own and kind not in seen and kind.__module__.startswith("tui."):
                seen.add(kind)
                sections.append((getattr(kind, "HELP_SECTION", "") or kind.__name__, own))
        self.push_screen(HelpScreen("accelwatch keys", sections))

    def action_graph(self) -> None:
        target = self.graph_target()
        if target is None:
            self.notify("select a GPU card or a process first", severity="warning")
            return
        entity, source = target
        snap = self.frame.snapshot if self.frame else None
        metrics = [
            m.name
            for m in CATALOG.by_source(source)
            if snap is not None and (entity, m.name) in snap.values
        ]
        if not metrics:
            self.notify(f"no metrics recorded for {entity}", severity="warning")
            return
        self.push_screen(
            TimeSeriesScreen(self.reader, entity, metrics, self.current_ts, window_s=self.window_s)
        )

    def graph_target(self) -> tuple[str, str] | None:
        """(entity, source) of what is selected: a card, a process row, the host panel."""
        focused = self.focused
        if isinstance(focused, GpuCard):
            return focused.entity, focused.source
        if isinstance(focused, ProcessTable) and focused.selected_pid is not None:
            return str(focused.selected_pid), "process"
        if isinstance(focused, HostPanel):
            return "host", "host"
        if isinstance(focused, FindingsTable) and focused.selected is not None and self.frame:
            entity = focused.selected.entity
            for batch in self.frame.snapshot.batches:
                if entity in batch.entities:
                    return entity, batch.source
        cards = [c for c in self.query(GpuCard) if c.display]
        if cards:
            return cards[0].entity, cards[0].source
        return ("host", "host") if self.frame else None

    def on_gpu_card_selected(self, message: GpuCard.Selected) -> None:
        message.card.focus()

    def on_process_table_sort_changed(self, _: ProcessTable.SortChanged) -> None:
        self._reshow_processes()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        findings = self.query_one(FindingsTable)
        if event.data_table is findings and findings.selected is not None:
            self.push_screen(
                EvidenceScreen(findings.selected, can_jump=not self.reader.live), self.jump_to
            )

    def jump_to(self, ts: float | None) -> None:
        """Evidence screen result: a time to move to (replay only)."""
