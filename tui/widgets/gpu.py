"""One card per accelerator of any source, read by role: activity sparklines, memory, power,
thermals, clocks, throttling, links; lines the source has no metric for are left out."""

from __future__ import annotations

from rich.style import Style
from textual.containers import VerticalScroll
from textual.events import Click
from textual.message import Message
from textual.widgets import Static

from agent.catalog.roles import ROLES, latency_role
from agent.registry import default_registry
from tui.format import bar, format_unit, spark
from tui.views import BUSY, COMPUTE, QUEUE, SLOWDOWN_ROLES, TENSOR, AcceleratorView
from tui.widgets.lines import Lines, LineWidget

_LABEL = 5  # width of the left label column
_PARTS = ("label", "spark", "membar", "throttle", "hot", "dim")
USED, TOTAL = "accelerator.memory.used", "accelerator.memory.total"
POWER, POWER_LIMIT, TEMPERATURE = (
    "accelerator.power",
    "accelerator.power.limit",
    "accelerator.temperature",
)
CLOCK, CLOCK_MAX, MEMORY_CLOCK = (
    "accelerator.clock",
    "accelerator.clock.max",
    "accelerator.clock.memory",
)
HOST_TX, HOST_RX = "accelerator.host_link.tx", "accelerator.host_link.rx"
PEER_TX, PEER_RX = "accelerator.peer_link.tx", "accelerator.peer_link.rx"
FAULT, ECC = "accelerator.fault", "accelerator.ecc.uncorrected"
#: Latency lines: (label, stems) - program execution with the queue, transfers, collectives.
_LATENCY_LINES = (("exec", ("exec",)), ("xfer", ("h2d", "d2h")), ("coll", ("collective", "dcn")))
_STEM_WORD = {"exec": "", "h2d": "h2d ", "d2h": "d2h ", "collective": "", "dcn": "dcn "}


def latency_text(seconds: float | None) -> str:
    """``850µs``, ``48.0ms``, ``110ms``, ``1.25s``."""
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 0.1:
        return f"{seconds * 1e3:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1e3:.0f}ms"
    return f"{seconds:.2f}s"


#: stem → its (p50, p99) roles.
_PERCENTILE_ROLES = {
    stem: (latency_role(stem, "p50"), latency_role(stem, "p99"))
    for _, stems in _LATENCY_LINES
    for stem in stems
}


def runtime_lines(view: AcceleratorView) -> list[tuple[str, list[str]]]:
    """(label, parts) per runtime line the device has values for: its queue and the p50/p99 of
    program execution, host <-> device transfers and collectives (DCN across slices)."""
    lines = []
    for label, stems in _LATENCY_LINES:
        parts = []
        if label == "exec" and view.get(QUEUE) is not None:
            parts.append(f"queue {view.get(QUEUE):.0f}")
        for stem in stems:
            p50_role, p99_role = _PERCENTILE_ROLES[stem]
            p50, p99 = view.get(p50_role), view.get(p99_role)
            if p50 is None and p99 is None:
                continue
            parts.append(f"{_STEM_WORD[stem]}p50 {latency_text(p50)} p99 {latency_text(p99)}")
        if parts:
            lines.append((label, parts))
    return lines


def fmt(role: str, value: float | None) -> str:
    """A value of ``role`` in the role's unit (every source converts to it)."""
    return format_unit(ROLES[role][0], value)


def _error_counters(view: AcceleratorView) -> list[tuple[str, float]]:
    """Non-zero error counters worth a glance: (label, count); the fault label is the source's
    own word for it (``gpu.xid`` → XID)."""
    out = []
    for role, label in ((FAULT, view.label(FAULT).upper()), (ECC, "ECC")):
        count = view.get(role)
        if count:
            out.append((label, count))
    return out


def _used_of_total(view: AcceleratorView) -> str:
    """``60.0/80.0 GiB`` (the unit once when both share it)."""
    used = fmt(USED, view.get(USED))
    total = fmt(TOTAL, view.get(TOTAL))
    if used.count(" ") == 1 and used.split()[1] == total.split()[-1]:
        return f"{used.split()[0]}/{total}"
    return f"{used}/{total}"


def _has_sm_line(view: AcceleratorView) -> bool:
    """Compute and tensor activity get their own line once the device reports compute activity."""
    return bool(len(view.recent.get(COMPUTE, ())))


def _throttle_text(view: AcceleratorView) -> str:
    return " ".join(flag.replace("_", " ").upper() for flag in view.throttle)


class GpuCard(LineWidget, can_focus=True):
    """A compact, width-aware card; dimmed when the job does not use the device."""

    COMPONENT_CLASSES = {f"gpu-card--{part}" for part in _PARTS}

    class Selected(Message):
        """The card was clicked (for the time-series view)."""

        def __init__(self, card: GpuCard) -> None:
            super().__init__()
            self.card = card

    def __init__(self, entity: str, source: str = "") -> None:
        super().__init__(id=f"card-{entity}", classes="gpu-card")
        self.entity = entity
        #: The source that measures the device (for charts of its metrics).
        self.source = source
        self.view: AcceleratorView | None = None
        self.border_title = entity
        self._titles = (entity, "")
        self._runtime_labels: list[str] = []
        self._runtime_rows: tuple[AcceleratorView | None, list[tuple[str, list[str]]]] = (None, [])

    def show(self, view: AcceleratorView) -> None:
        """Draw ``view``; only the lines that differ from the last one are repainted (with
        live data most ticks change some, so no signature of the whole view is computed)."""
        before = self.view
        self.view = view
        # Set only on change: assigning a border title repaints the whole card.
        title = f"{view.entity} · {view.name}" if view.name else view.entity
        subtitle = "LOST" if view.lost else "job" if view.used_by_job else "not used by job"
        if before is None or title != self._titles[0]:
            self.border_title = title
        if before is None or subtitle != self._titles[1]:
            self.border_subtitle = subtitle
        self._titles = (title, subtitle)
        self.set_class(not view.used_by_job, "-unused")
        self.set_class(view.lost, "-lost")
        self.set_class(bool(view.throttle), "-throttled")
        # Re-layout only when the card's height may change: laying out all cards every tick
        # was most of the refresh cost; otherwise only the lines that changed are repainted.
        self._runtime_rows = (view, runtime_lines(view))  # draw() reuses them this tick
        labels = [label for label, _ in self._runtime_rows[1]]
        sm_line_changed = before is not None and _has_sm_line(before) != _has_sm_line(view)
        self.redraw(layout=before is None or sm_line_changed or labels != self._runtime_labels)
        self._runtime_labels = labels

    def _part_styles(self) -> dict[str, Style]:
        """Component styles (looked up again only after a restyle)."""
        return {part: self.part_style(f"gpu-card--{part}") for part in _PARTS}

    def on_click(self, event: Click) -> None:
        self.focus()
        self.post_message(self.Selected(self))

    def draw(self, width: int) -> Lines:
        view = self.view
        if view is None:
            return Lines().append("waiting for data…")
        width = max(width, 20)
        st = self._part_styles()
        out = Lines()
        if self.short:
            self._short(out, view, width, st)
            return out
        self._activity(out, view, width, st)
        self._memory(out, view, width, st)
        self._power(out, view, width, st)
        self._throttle(out, view, st)
        self._links(out, view, st)
        shown, rows = self._runtime_rows
        self._runtime(out, rows if shown is view else runtime_lines(view), width, st)
        return out

    @property
    def short(self) -> bool:
        """Two lines per card on short terminals, so eight GPUs fit in 24 rows."""
        return self.app.has_class("-short")

    @staticmethod
    def _short(out: Lines, view: AcceleratorView, width: int, st: dict) -> None:
        head = f"{view.label(BUSY, 'busy')} {fmt(BUSY, view.get(BUSY)):>4} "
        tail = "".join(
            f" {view.label(role)} {fmt(role, view.get(role))}"
            for role in (COMPUTE, TENSOR)
            if view.has(role)
        )
        out.append(head, st["label"])
        out.append(
            spark(view.recent.get(BUSY, ()), max(width - len(head) - len(tail), 2), top=1.0),
            st["spark"],
        )
        out.append(tail + "\n")
        out.append(f"mem {_used_of_total(view)}")
        if view.get(QUEUE) is not None:
            out.append(f" q {view.get(QUEUE):.0f}")
        if view.has(POWER):
            out.append(f" {fmt(POWER, view.get(POWER))}")
        out.append(" ")
        if view.has(TEMPERATURE):
            out.append(fmt(TEMPERATURE, view.get(TEMPERATURE)), st["hot"] if view.throttle else "")
        if view.lost:
            out.append(" ✖ LOST", st["throttle"])
        elif view.throttle:
            out.append(" ⚠ " + _throttle_text(view), st["throttle"])
        for label, count in _error_counters(view):
            out.append(f"  ✖ {label} {count:.0f}", st["throttle"])

    @staticmethod
    def _activity(out: Lines, view: AcceleratorView, width: int, st: dict) -> None:
        head = f"{view.label(BUSY, 'busy'):<{_LABEL}}{fmt(BUSY, view.get(BUSY)):>4} "
        out.append(head, st["label"])
        out.append(spark(view.recent.get(BUSY, ()), width - len(head), top=1.0), st["spark"])
        out.append("\n")
        if not _has_sm_line(view):
            return
        sm = f"{view.label(COMPUTE):<{_LABEL}}{fmt(COMPUTE, view.get(COMPUTE)):>4} "
        tc = (
            f" {view.label(TENSOR)} {fmt(TENSOR, view.get(TENSOR)):>4} " if view.has(TENSOR) else ""
        )
        room = max(width - len(sm) - len(tc), 2)
        share = room // 2 if tc else room
        out.append(sm, st["label"])
        out.append(spark(view.recent.get(COMPUTE, ()), share, top=1.0), st["spark"])
        if tc:
            out.append(tc, st["label"])
            out.append(spark(view.recent.get(TENSOR, ()), room - share, top=1.0), st["spark"])
        out.append("\n")

    @staticmethod
    def _memory(out: Lines, view: AcceleratorView, width: int, st: dict) -> None:
        used, total = view.get(USED), view.get(TOTAL)
        label = f" {_used_of_total(view)}"
        fraction = used / total if used is not None and total else None
        out.append(f"{'mem':<{_LABEL}}", st["label"])
        out.append(bar(fraction, max(width - _LABEL - len(label), 4)), st["membar"])
        out.append(label + "\n")

    @staticmethod
    def _power(out: Lines, view: AcceleratorView, width: int, st: dict) -> None:
        if not any(view.has(r) for r in (POWER, TEMPERATURE, CLOCK, MEMORY_CLOCK)):
            return
        power, limit = view.get(POWER), view.get(POWER_LIMIT)
        out.append(f"{'pwr':<{_LABEL}}", st["label"])
        watts = fmt(POWER, power)
        if limit is not None and power is not None:
            watts = f"{power:.0f}/{fmt(POWER_LIMIT, limit)}"
        out.append(f"{watts}  ")
        if view.has(TEMPERATURE):
            out.append(fmt(TEMPERATURE, view.get(TEMPERATURE)), st["hot"] if view.throttle else "")
        if view.has(CLOCK):
            clock, clock_max = view.get(CLOCK), view.get(CLOCK_MAX)
            word = view.metrics[CLOCK].rsplit(".", 1)[-1]  # gpu.clock.sm → sm
            out.append(
                f"  {word} {clock:.0f}/{fmt(CLOCK_MAX, clock_max)}"
                if clock is not None and clock_max
                else f"  {word} {fmt(CLOCK, clock)}"
            )
        if view.has(MEMORY_CLOCK):
            memory_clock = f"  mem {fmt(MEMORY_CLOCK, view.get(MEMORY_CLOCK))}"
            if len(out.plain.rsplit("\n", 1)[-1]) + len(memory_clock) <= width:
                out.append(memory_clock)
        out.append("\n")

    @staticmethod
    def _throttle(out: Lines, view: AcceleratorView, st: dict) -> None:
        errors = _error_counters(view)
        if not (view.lost or errors or any(view.has(r) for r in SLOWDOWN_ROLES)):
            return
        out.append(f"{'clk':<{_LABEL}}", st["label"])
        if view.lost:
            out.append(f"✖ {view.device_word} LOST: no answer from the device", st["throttle"])
        elif view.throttle:
            out.append(f"⚠ THROTTLED: {_throttle_text(view)}", st["throttle"])
        else:
            out.append("no slowdown", st["dim"])
        for label, count in errors:
            out.append(f"  ✖ {label} {count:.0f}", st["throttle"])
        out.append("\n")

    @staticmethod
    def _links(out: Lines, view: AcceleratorView, st: dict) -> None:
        if view.has(HOST_TX) or view.has(HOST_RX):
            out.append(f"{view.label(HOST_TX, 'host'):<{_LABEL}}", st["label"])
            out.append(f"↑{fmt(HOST_TX, view.get(HOST_TX))} ↓{fmt(HOST_RX, view.get(HOST_RX))}")
        peer_tx, peer_rx = view.get(PEER_TX), view.get(PEER_RX)
        if peer_tx is not None or peer_rx is not None:
            out.append(
                f"  {view.label(PEER_TX, 'peer')} ↑{fmt(PEER_TX, peer_tx)} ↓{fmt(PEER_RX, peer_rx)}"
            )

    @staticmethod
    def _runtime(out: Lines, lines: list[tuple[str, list[str]]], width: int, st: dict) -> None:
        """Each part of the runtime ``lines`` on the label's line while it fits, else on a
        line of its own."""
        rows: list[tuple[str, str]] = []
        for label, parts in lines:
            row = ""
            for part in parts:
                if row and _LABEL + len(row) + 2 + len(part) > width:
                    rows.append((label, row))
                    label, row = "", ""
                row = f"{row}  {part}" if row else part
            rows.append((label, row))
        if rows and out.plain and not out.plain.endswith("\n"):
            out.append("\n")
        for i, (label, row) in enumerate(rows):
            out.append(f"{label:<{_LABEL}}", st["label"])
            out.append(row + ("\n" if i < len(rows) - 1 else ""))


class GpuPanel(VerticalScroll):
    """Holds the cards; adds one when a device appears, hides unused ones on request."""

    def __init__(self) -> None:
        super().__init__(id="gpus")
        self.hide_unused = False
        self.empty_reason = "waiting for accelerator data…"
        #: The cards mounted so far, by entity (a DOM query every tick cost more than a card).
        self._cards: dict[str, GpuCard] = {}
        self._placeholder = True

    def show(self, views: list[AcceleratorView], notices: dict[str, str]) -> None:
        known = self._cards
        if views and self._placeholder:
            self.query("#no-gpus").remove()
            self._placeholder = False
        for view in views:
            card = known.get(view.entity)
            if card is None:
                card = known[view.entity] = GpuCard(view.entity, view.source)
                self.mount(card)
            card.show(view)
            shown = view.used_by_job or not self.hide_unused
            if card.display != shown:  # setting it restyles the card, even to the same value
                card.display = shown
        if not views:
            text = _no_accelerators(notices) or self.empty_reason
            placeholder = self.query("#no-gpus")
            if not placeholder:
                self.mount(Static(text, id="no-gpus"))
            else:
                placeholder.first().update(text)
            self._placeholder = True

    def relayout_cards(self) -> None:
        """Card height follows the terminal's (short or full cards)."""
        for card in self.query(GpuCard):
            card.redraw(layout=True)

    def toggle_unused(self) -> bool:
        self.hide_unused = not self.hide_unused
        for card in self.query(GpuCard):
            if card.view is not None:
                card.display = card.view.used_by_job or not self.hide_unused
        return self.hide_unused


def _no_accelerators(notices: dict[str, str]) -> str:
    """Why no card shows: the accelerator sources that did not start, with their reasons."""
    registry = default_registry()
    missing = [
        f"{source} {reason}"
        for source, reason in sorted(notices.items())
        if (spec := registry.get(source)) is not None
        and any(kind.kind == "accelerator" for kind in spec.entity_kinds)
    ]
    return f"No accelerators: {'; '.join(missing)}" if missing else ""
