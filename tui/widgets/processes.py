"""The job's process tree as a sortable table (click a header or press ``s``).

Drawn as one text block rather than a DataTable: the table changes every tick, and
re-rendering a DataTable's cells cost ~80 ms per refresh with 32 processes; this costs ~1 ms.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.events import Click
from textual.message import Message

from tui.format import fmt
from tui.views import SORT_KEYS, ProcessRow
from tui.widgets.lines import Lines, LineWidget

#: (key, header, width, sort key it selects or None); width 0 takes what is left.
Column = tuple[str, str, int, "str | None"]
COLUMNS: tuple[Column, ...] = (
    ("pid", "PID", 10, "tree"),
    ("role", "ROLE", 7, None),
    ("cpu", "CPU", 6, "cpu"),
    ("rss", "RSS", 9, "rss"),
    ("gpu", "GPU MEM", 9, "gpu_mem"),
    ("read", "READ/s", 10, "io"),
    ("write", "WRITE/s", 10, "io"),
    ("cmd", "COMMAND", 0, None),
)
#: Below this width the role shrinks to its initial (M main, W worker, C child) and the two
#: I/O columns fold into one.
NARROW_WIDTH = 62
NARROW_COLUMNS: tuple[Column, ...] = (
    ("pid", "PID", 9, "tree"),
    ("role1", "R", 2, None),
    ("cpu", "CPU", 6, "cpu"),
    ("rss", "RSS", 9, "rss"),
    ("gpu", "GPU MEM", 9, "gpu_mem"),
    ("io", "I/O/s", 10, "io"),
    ("cmd", "COMMAND", 0, None),
)
_LEFT = ("pid", "role", "role1", "cmd")


def row_cells(row: ProcessRow) -> dict[str, str]:
    """The text of each column (by key) for one process."""
    io = (
        None
        if row.read_rate is None and row.write_rate is None
        else (row.read_rate or 0.0) + (row.write_rate or 0.0)
    )
    return {
        "pid": f"{'  ' * min(row.depth, 3)}{row.pid}",
        "role": row.role,
        "role1": row.role[:1].upper(),
        "cpu": fmt("process.cpu.utilization", row.cpu),
        "rss": fmt("process.memory.rss", row.rss),
        "gpu": fmt("gpu.process.memory", row.gpu_memory) if row.gpu_memory is not None else "",
        "read": fmt("process.io.read_bytes", row.read_rate, per_second=True),
        "write": fmt("process.io.write_bytes", row.write_rate, per_second=True),
        "io": fmt("process.io.read_bytes", io, per_second=True),
        "cmd": row.name,
    }


def columns_for(width: int) -> tuple[Column, ...]:
    return COLUMNS if width >= NARROW_WIDTH else NARROW_COLUMNS


def _line(columns: tuple[Column, ...], cells: dict[str, str], width: int) -> str:
    parts = []
    for key, _, size, _ in columns:
        cell = cells[key]
        if size == 0:
            parts.append(cell)
        elif key in _LEFT:
            parts.append(cell[: size - 1].ljust(size))
        else:
            parts.append(cell[: size - 1].rjust(size - 1) + " ")
    return "".join(parts)[:width].ljust(width)


class ProcessTable(LineWidget, can_focus=True):
    """Rows are processes; ``↑``/``↓`` select (for the graph view), a header click sorts."""

    HELP_SECTION = "processes panel, when focused"
    ELLIPSIS = False
    COMPONENT_CLASSES = {"process-table--header", "process-table--cursor", "process-table--main"}
    BINDINGS = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "move(-10)", "Page up", show=False),
        Binding("pagedown", "move(10)", "Page down", show=False),
        Binding("home", "move(-100000)", "First", show=False),
        Binding("end", "move(100000)", "Last", show=False),
    ]

    class SortChanged(Message):
        """A header was clicked; the app re-sorts with the latest data."""

    def __init__(self) -> None:
        super().__init__(id="processes")
        self.sort_key = "tree"
        self.rows: list[ProcessRow] = []
        self.cursor = 0
        self._title()

    def _title(self) -> None:
        self.border_title = f"processes · sort {self.sort_key}"
        self.redraw()  # the header's ▼ moves

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def selected_pid(self) -> int | None:
        return self.rows[self.cursor].pid if self.rows else None

    def cycle_sort(self) -> str:
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        self._title()
        return self.sort_key

    def sort_by_column(self, key: str) -> str | None:
        for name, _, _, sort in COLUMNS + NARROW_COLUMNS:
            if name == key and sort is not None:
                self.sort_key = sort
                self._title()
                return sort
        return None

    def show(self, rows: list[ProcessRow]) -> None:
        """New rows; the selection follows its pid when the order changes."""
        if rows == self.rows:
            return
        selected = self.selected_pid
        self.rows = list(rows)
        pids = [r.pid for r in self.rows]
        self.cursor = (
            pids.index(selected) if selected in pids else min(self.cursor, max(len(pids) - 1, 0))
        )
        self.redraw()

    def _top(self) -> int:
        """First row shown, so the cursor stays visible."""
        visible = max(self.content_size.height - 1, 1)
        return max(0, min(self.cursor - visible // 2, len(self.rows) - visible))

    def draw(self, width: int) -> Lines:
        width = max(width, 10)
        visible = max(self.content_size.height - 1, 0)
        columns = columns_for(width)
        header = {
            key: f"{name}{'▼' if sort == self.sort_key else ''}" for key, name, _, sort in columns
        }
        out = Lines()
        out.append(_line(columns, header, width), self.part_style("process-table--header"))
        top = self._top()
        cursor_style = self.part_style("process-table--cursor")
        main_style = self.part_style("process-table--main")
        for index in range(top, min(top + visible, len(self.rows))):
            row = self.rows[index]
            style = (
                cursor_style
                if index == self.cursor and self.has_focus
                else main_style
                if row.role == "main"
                else ""
            )
            out.append("\n")
            out.append(_line(columns, row_cells(row), width), style)
        return out

    def action_move(self, step: int) -> None:
        if self.rows:
            self.cursor = min(max(self.cursor + step, 0), len(self.rows) - 1)
            self.redraw()

    def on_click(self, event: Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            x = offset.x
            for key, _, size, _ in columns_for(self.content_size.width):
                if size == 0 or x < size:
                    if self.sort_by_column(key):
                        self.post_message(self.SortChanged())
                    return
                x -= size
        elif self.rows:
            self.cursor = min(self._top() + offset.y - 1, len(self.rows) - 1)
            self.redraw()

    def on_focus(self) -> None:
        self.redraw()

    def on_blur(self) -> None:
        self.redraw()
