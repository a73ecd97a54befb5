"""The job's process tree as a sortable table (click a header or press ``s``)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from tui.format import fmt
from tui.views import SORT_KEYS, ProcessRow

#: (column key, header, sort key it selects or None)
COLUMNS = (
    ("pid", "PID", "tree"), ("role", "ROLE", None), ("cpu", "CPU", "cpu"),
    ("rss", "RSS", "rss"), ("read", "READ/s", "io"), ("write", "WRITE/s", "io"),
    ("gpu", "GPU MEM", "gpu_mem"), ("cmd", "COMMAND", None),
)


def _cells(row: ProcessRow) -> tuple[Text | str, ...]:
    indent = "  " * min(row.depth, 6)
    return (
        Text(f"{indent}{row.pid}"),
        row.role,
        Text(fmt("process.cpu.utilization", row.cpu), justify="right"),
        Text(fmt("process.memory.rss", row.rss), justify="right"),
        Text(fmt("process.io.read_bytes", row.read_rate, per_second=True), justify="right"),
        Text(fmt("process.io.write_bytes", row.write_rate, per_second=True), justify="right"),
        Text(fmt("gpu.process.memory", row.gpu_memory) if row.gpu_memory is not None else "",
             justify="right"),
        row.name,
    )


class ProcessTable(DataTable):
    """Rows keyed by pid; unchanged cells are not touched, so refreshing is cheap."""

    def __init__(self) -> None:
        super().__init__(id="processes", cursor_type="row", zebra_stripes=True)
        self.sort_key = "tree"
        self._shown: list[tuple[int, tuple]] = []
        self.border_title = "processes"

    def on_mount(self) -> None:
        for key, label, _ in COLUMNS:
            self.add_column(label, key=key)
        self._title()

    def _title(self) -> None:
        self.border_title = f"processes · sort {self.sort_key}"

    def cycle_sort(self) -> str:
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        self._title()
        return self.sort_key

    def sort_by_column(self, column_key: str) -> str | None:
        for key, _, sort in COLUMNS:
            if key == column_key and sort is not None:
                self.sort_key = sort
                self._title()
                return sort
        return None

    @property
    def selected_pid(self) -> int | None:
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return int(row_key.value) if row_key.value is not None else None

    def show(self, rows: list[ProcessRow]) -> None:
        shown = [(row.pid, _cells(row)) for row in rows]
        if shown == self._shown:
            return
        if [pid for pid, _ in shown] == [pid for pid, _ in self._shown]:
            for (pid, cells), (_, before) in zip(shown, self._shown):
                for (key, _, _), cell, old in zip(COLUMNS, cells, before):
                    if cell != old:
                        self.update_cell(str(pid), key, cell)
        else:
            selected = self.selected_pid
            self.clear()
            for pid, cells in shown:
                self.add_row(*cells, key=str(pid))
            if selected is not None and str(selected) in self.rows:
                self.move_cursor(row=self.get_row_index(str(selected)), animate=False)
        self._shown = shown
