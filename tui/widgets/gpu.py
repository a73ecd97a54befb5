"""One card per accelerator: activity sparklines, memory, power, thermals, clocks, links."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.containers import VerticalScroll
from textual.events import Click
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from tui.format import bar, fmt, spark
from tui.views import GpuView

_LABEL = 5  # width of the left label column
_PARTS = ("label", "spark", "membar", "throttle", "hot", "dim")
#: Error counters worth a glance on the card (non-zero only): metric → label.
_ERROR_COUNTERS = (("gpu.xid", "XID"), ("gpu.ecc.volatile.uncorrected", "ECC"))


def _used_of_total(view: GpuView) -> str:
    """``60.0/80.0 GiB`` (the unit once when both share it)."""
    used = fmt("gpu.memory.used", view.get("gpu.memory.used"))
    total = fmt("gpu.memory.total", view.get("gpu.memory.total"))
    if used.count(" ") == 1 and used.split()[1] == total.split()[-1]:
        return f"{used.split()[0]}/{total}"
    return f"{used}/{total}"


def _has_sm_line(view: GpuView) -> bool:
    """SM and tensor activity get their own line once the device reports SM activity."""
    return bool(len(view.recent.get("gpu.sm.activity", ())))


class GpuCard(Widget, can_focus=True):
    """A compact, width-aware card; dimmed when the job does not use the device."""

    COMPONENT_CLASSES = {f"gpu-card--{part}" for part in _PARTS}

    class Selected(Message):
        """The card was clicked (for the time-series view)."""

        def __init__(self, card: GpuCard) -> None:
            super().__init__()
            self.card = card

    def __init__(self, entity: str) -> None:
        super().__init__(id=f"card-{entity}", classes="gpu-card")
        self.entity = entity
        self.view: GpuView | None = None
        self.border_title = entity
        self._styles: tuple[tuple, dict[str, Style]] | None = None

    def show(self, view: GpuView) -> None:
        before = self.view
        if before is not None and view.signature() == before.signature():
            return
        self.view = view
        self.border_title = f"{view.entity} · {view.name}" if view.name else view.entity
        self.border_subtitle = (
            "LOST" if view.lost else "job" if view.used_by_job else "not used by job"
        )
        self.set_class(not view.used_by_job, "-unused")
        self.set_class(view.lost, "-lost")
        self.set_class(bool(view.throttle), "-throttled")
        # Re-layout only when the card's height may change: laying out all cards every tick
        # was most of the refresh cost.
        self.refresh(layout=before is None or _has_sm_line(before) != _has_sm_line(view))

    def _part_styles(self) -> dict[str, Style]:
        """Component styles, looked up again only when classes or the theme change."""
        key = (tuple(sorted(self.classes)), self.app.theme)
        if self._styles is None or self._styles[0] != key:
            self._styles = (
                key,
                {part: self.get_component_rich_style(f"gpu-card--{part}") for part in _PARTS},
            )
        return self._styles[1]

    def on_click(self, event: Click) -> None:
        self.focus()
        self.post_message(self.Selected(self))

    def render(self) -> Text:
        view = self.view
        if view is None:
            return Text("waiting for data…")
        width = max(self.content_size.width, 20)
        st = self._part_styles()
        out = Text(no_wrap=True, overflow="ellipsis")
        if self.short:
            self._short(out, view, width, st)
            return out
        self._activity(out, view, width, st)
        self._memory(out, view, width, st)
        self._power(out, view, width, st)
        self._throttle(out, view, st)
        self._links(out, view, st)
        return out

    @property
    def short(self) -> bool:
        """Two lines per card on short terminals, so eight GPUs fit in 24 rows."""
        return self.app.has_class("-short")

    @staticmethod
    def _short(out: Text, view: GpuView, width: int, st: dict) -> None:
        head = f"util {fmt('gpu.utilization', view.get('gpu.utilization')):>4} "
        tail = (
            f" sm {fmt('gpu.sm.activity', view.get('gpu.sm.activity'))}"
            f" tc {fmt('gpu.tensor.activity', view.get('gpu.tensor.activity'))}"
        )
        out.append(head, st["label"])
        out.append(
            spark(
                view.recent.get("gpu.utilization", ()),
                max(width - len(head) - len(tail), 2),
                top=1.0,
            ),
            st["spark"],
        )
        out.append(tail + "\n")
        out.append(f"mem {_used_of_total(view)} {fmt('gpu.power', view.get('gpu.power'))} ")
        out.append(
            fmt("gpu.temperature", view.get("gpu.temperature")), st["hot"] if view.throttle else ""
        )
        if view.lost:
            out.append(" ✖ LOST", st["throttle"])
        elif view.throttle:
            out.append(
                " ⚠ " + " ".join(f.replace("_", " ").upper() for f in view.throttle), st["throttle"]
            )
        for metric, label in _ERROR_COUNTERS:
            if view.get(metric):
                out.append(f"  ✖ {label} {view.get(metric):.0f}", st["throttle"])

    @staticmethod
    def _activity(out: Text, view: GpuView, width: int, st: dict) -> None:
        head = f"{'util':<{_LABEL}}{fmt('gpu.utilization', view.get('gpu.utilization')):>4} "
        out.append(head, st["label"])
        out.append(
            spark(view.recent.get("gpu.utilization", ()), width - len(head), top=1.0), st["spark"]
        )
        out.append("\n")
        if not _has_sm_line(view):
            return
        sm = f"{'sm':<{_LABEL}}{fmt('gpu.sm.activity', view.get('gpu.sm.activity')):>4} "
        tc = f" tc {fmt('gpu.tensor.activity', view.get('gpu.tensor.activity')):>4} "
        room = max(width - len(sm) - len(tc), 2)
        out.append(sm, st["label"])
        out.append(spark(view.recent.get("gpu.sm.activity", ()), room // 2, top=1.0), st["spark"])
        out.append(tc, st["label"])
        out.append(
            spark(view.recent.get("gpu.tensor.activity", ()), room - room // 2, top=1.0),
            st["spark"],
        )
        out.append("\n")

    @staticmethod
    def _memory(out: Text, view: GpuView, width: int, st: dict) -> None:
        used, total = view.get("gpu.memory.used"), view.get("gpu.memory.total")
        label = f" {_used_of_total(view)}"
        fraction = used / total if used is not None and total else None
        out.append(f"{'mem':<{_LABEL}}", st["label"])
        out.append(bar(fraction, max(width - _LABEL - len(label), 4)), st["membar"])
        out.append(label + "\n")

    @staticmethod
    def _power(out: Text, view: GpuView, width: int, st: dict) -> None:
        power, limit = view.get("gpu.power"), view.get("gpu.power.limit")
        clock, clock_max = view.get("gpu.clock.sm"), view.get("gpu.clock.sm.max")
        out.append(f"{'pwr':<{_LABEL}}", st["label"])
        watts = fmt("gpu.power", power)
        if limit is not None and power is not None:
            watts = f"{power:.0f}/{fmt('gpu.power.limit', limit)}"
        out.append(f"{watts}  ")
        out.append(
            fmt("gpu.temperature", view.get("gpu.temperature")), st["hot"] if view.throttle else ""
        )
        clocks = (
            f"  sm {clock:.0f}/{fmt('gpu.clock.sm.max', clock_max)}"
            if clock is not None and clock_max
            else f"  sm {fmt('gpu.clock.sm', clock)}"
        )
        out.append(clocks)
        memory_clock = f"  mem {fmt('gpu.clock.memory', view.get('gpu.clock.memory'))}"
        if len(out.plain.rsplit("\n", 1)[-1]) + len(memory_clock) <= width:
            out.append(memory_clock)
        out.append("\n")

    @staticmethod
    def _throttle(out: Text, view: GpuView, st: dict) -> None:
        out.append(f"{'clk':<{_LABEL}}", st["label"])
        if view.lost:
            out.append("✖ GPU LOST: no answer from the device", st["throttle"])
        elif view.throttle:
            reasons = " ".join(flag.replace("_", " ").upper() for flag in view.throttle)
            out.append(f"⚠ THROTTLED: {reasons}", st["throttle"])
        else:
            out.append("no slowdown", st["dim"])
        for metric, label in _ERROR_COUNTERS:
            count = view.get(metric)
            if count:
                out.append(f"  ✖ {label} {count:.0f}", st["throttle"])
        out.append("\n")

    @staticmethod
    def _links(out: Text, view: GpuView, st: dict) -> None:
        out.append(f"{'pcie':<{_LABEL}}", st["label"])
        out.append(
            f"↑{fmt('gpu.pcie.tx_throughput', view.get('gpu.pcie.tx_throughput'))} "
            f"↓{fmt('gpu.pcie.rx_throughput', view.get('gpu.pcie.rx_throughput'))}"
        )
        nv_tx, nv_rx = view.get("gpu.nvlink.tx_throughput"), view.get("gpu.nvlink.rx_throughput")
        if nv_tx is not None or nv_rx is not None:
            out.append(
                f"  nvl ↑{fmt('gpu.nvlink.tx_throughput', nv_tx)} "
                f"↓{fmt('gpu.nvlink.rx_throughput', nv_rx)}"
            )


class GpuPanel(VerticalScroll):
    """Holds the cards; adds one when a device appears, hides unused ones on request."""

    def __init__(self) -> None:
        super().__init__(id="gpus")
        self.hide_unused = False
        self.empty_reason = "waiting for accelerator data…"

    def show(self, views: list[GpuView], notices: dict[str, str]) -> None:
        known = {card.entity: card for card in self.query(GpuCard)}
        placeholder = self.query("#no-gpus")
        if views and placeholder:
            placeholder.remove()
        for view in views:
            card = known.get(view.entity)
            if card is None:
                card = GpuCard(view.entity)
                self.mount(card)
            card.show(view)
            card.display = view.used_by_job or not self.hide_unused
        if not views:
            reason = notices.get("nvml")
            text = f"No accelerators: nvml {reason}" if reason else self.empty_reason
            if not placeholder:
                self.mount(Static(text, id="no-gpus"))
            else:
                placeholder.first().update(text)

    def relayout_cards(self) -> None:
        """Card height follows the terminal's (short or full cards)."""
        for card in self.query(GpuCard):
            card.refresh(layout=True)

    def toggle_unused(self) -> bool:
        self.hide_unused = not self.hide_unused
        for card in self.query(GpuCard):
            if card.view is not None:
                card.display = card.view.used_by_job or not self.hide_unused
        return self.hide_unused
