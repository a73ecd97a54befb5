"""The machine: CPU per core (one cell each), memory, disk, network and InfiniBand rates."""

from __future__ import annotations

from tui.fabric_storage import MAX_LINES
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
            lines_before = self.view is None or _line_count(self.view) != _line_count(view)
            self.view = view
            self.redraw(layout=lines_before)

    def on_click(self) -> None:
        self.focus()

    def draw(self, width: int) -> Lines:
        view = self.view
        if view is None:
            return Lines().append("waiting for host data…")
        label = self.part_style("host-panel--label")
        width = max(width, 20)
        out = Lines()
        out.append("cpu  ", label)
        out.append(f"{fmt('host.cpu.utilization', view.cpu):>4} ")
        cores = "".join(_LEVELS[round(min(max(c, 0.0), 1.0) * 8)] for c in view.cores)
        out.append(cores[: max(width - 10, 1)], self.part_style("host-panel--cores"))
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
        if any(p.rate is not None for p in view.ports):  # per port where its line rate is known
            _port_lines(out, view, label)
        elif view.ib_rx is not None or view.ib_tx is not None:
            out.append("\nib   ", label)
            out.append(f"↓{_rate(view.ib_rx)} ↑{_rate(view.ib_tx)}")
        _interface_lines(out, view, label)
        _mount_lines(out, view, label)
        return out


def _line_count(view: HostView) -> tuple[int, int, int, bool]:
    per_port = any(p.rate is not None for p in view.ports)
    return (min(len(view.ports), MAX_LINES + 1) if per_port else 0,
            min(len(view.mounts), MAX_LINES + 1), min(len(view.interfaces), MAX_LINES + 1),
            view.ib_rx is None)  # fmt: skip


def _port_lines(out: Lines, view: HostView, label: str) -> None:
    for p in view.ports[:MAX_LINES]:
        out.append("\nib   ", label)
        state = "" if p.up is None or p.up >= 1 else " DOWN"
        line = f"{p.name} ↓{_rate(p.rx)} ↑{_rate(p.tx)}"
        if p.rate is not None:
            line += f" of {p.rate * 8 / 1e9:.0f}"
            if p.rate_max and p.rate < 0.99 * p.rate_max:
                line += f"/{p.rate_max * 8 / 1e9:.0f}"
            line += " Gb/s"
        if p.errors:
            line += f" err {p.errors:.0f}/s"
        out.append(line + state, "bold red" if state or p.errors else "")
    if len(view.ports) > MAX_LINES:
        out.append(f"\n     … {len(view.ports) - MAX_LINES} more ports")


def _interface_lines(out: Lines, view: HostView, label: str) -> None:
    for n in view.interfaces[:MAX_LINES]:
        out.append("\nnic  ", label)
        down = n.up is not None and n.up < 1
        line = f"{n.name} ↓{_rate(n.rx)} ↑{_rate(n.tx)}"
        if n.speed:
            line += f" of {n.speed * 8 / 1e9:g} Gb/s"
            share = n.utilization
            if share is not None and not down:
                line += f" {share:.0%}"
        out.append(line + (" DOWN" if down else ""), "bold red" if down else "")
    if len(view.interfaces) > MAX_LINES:
        out.append(f"\n     … {len(view.interfaces) - MAX_LINES} more interfaces")


def _mount_lines(out: Lines, view: HostView, label: str) -> None:
    for m in view.mounts[:MAX_LINES]:
        out.append("\nfs   ", label)
        kind = f" ({m.fstype})" if m.fstype else ""
        latency = "" if m.latency is None else f" {m.latency * 1000:.1f} ms"
        out.append(f"{m.name}{kind} r {_rate(m.read)} w {_rate(m.write)}{latency}")
    if len(view.mounts) > MAX_LINES:
        out.append(f"\n     … {len(view.mounts) - MAX_LINES} more mounts")


def _rate(value: float | None) -> str:
    return format_unit("By", value, per_second=True)
