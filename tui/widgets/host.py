"""The machine: CPU per core (one cell each), memory, disk, network and InfiniBand rates."""

from __future__ import annotations

from tui.format import bar, fmt, format_unit
from tui.views import HostView
from tui.widgets.lines import Lines, LineWidget

_LEVELS = " ▁▂▃▄▅▆▇█"


class HostPanel(LineWidget, can_focus=True):
    """Focus it (click or Tab) and press ``g`` to chart host metrics."""

    COMPONENT_CLASSES = {"host-panel--label", "host-panel--cores"}

    def __init__(self) -> None:
        super().__init__(id="host")
        self.view: HostView | None = None
        self.border_title = "host"

    def show(self, view: HostView) -> None:
        if view != self.view:
            lines_before = self.view is None or (self.view.ib_rx is None) != (view.ib_rx is None)
            self.view = view
            self.redraw(layout=lines_before)

    def on_click(self) -> None:
        self.focus()

    def draw(self, width: int) -> Lines:
        view = self.view
        if view is None:
            return Lines().append("waiting for host data…")
        label = self.get_component_rich_style("host-panel--label")
        width = max(width, 20)
        out = Lines()
        out.append("cpu  ", label)
        out.append(f"{fmt('host.cpu.utilization', view.cpu):>4} ")
        cores = "".join(_LEVELS[round(min(max(c, 0.0), 1.0) * 8)] for c in view.cores)
        out.append(cores[: max(width - 10, 1)], self.get_component_rich_style("host-panel--cores"))
        out.append("\nmem  ", label)
        fraction = (
            view.memory_used / view.memory_total
            if view.memory_used is not None and view.memory_total
            else None
        )
        tail = (
            f" {fmt('host.memory.used', view.memory_used)}/"
            f"{fmt('host.memory.total', view.memory_total)}"
        )
        out.append(bar(fraction, max(min(width - 5 - len(tail), 30), 4)))
        out.append(tail)
        out.append("\nio   ", label)
        out.append(
            f"disk r {_rate(view.disk_read)} w {_rate(view.disk_write)}  "
            f"net ↓{_rate(view.net_rx)} ↑{_rate(view.net_tx)}"
        )
        if view.ib_rx is not None or view.ib_tx is not None:
            out.append("\nib   ", label)
            out.append(f"↓{_rate(view.ib_rx)} ↑{_rate(view.ib_tx)}")
        return out


def _rate(value: float | None) -> str:
    return format_unit("By", value, per_second=True)
