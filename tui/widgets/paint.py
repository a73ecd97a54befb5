"""Changed lines of the main screen's panels written to the terminal at once, in one update.

A panel's ``refresh(region)`` costs, per tick and per panel, a prompt and an idle message
through the panel's own message queue and an update message to the screen; then the screen's
update timer has the compositor render every widget under the union of all dirty regions
(containers included: with the cards, header and host panel changing, that is most of the
screen) before it writes the dirty spans. That was over half of the UI's CPU at 1 Hz. A
:class:`LinePainter` instead renders just the changed lines through each panel's own styles
cache (the strips Textual would have drawn there, its line filters applied) and writes them in
one synchronized update, the way the compositor writes its spans.

It only does so where that is exactly what the compositor would show: the panel is on the
current screen, laid out, not waiting for a full repaint, and nothing is drawn over those
lines (a toast, a tooltip, a scrolled-off part). Anything else takes Textual's own path.
Nothing is lost for later paints: the lines go into the panel's styles cache, which the
compositor reads on its next full render.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.color import ColorSystem
from rich.console import Console
from rich.control import Control
from rich.segment import Segment
from textual._compositor import CompositorUpdate
from textual.geometry import Region
from textual.strip import Strip

if TYPE_CHECKING:
    from textual.app import App
    from textual.screen import Screen

    from tui.widgets.lines import LineWidget

#: Screen line → x → (the segments written there, the cells they take).
Chops = dict[int, dict[int, tuple[list[Segment], int]]]


class LinePainter:
    """Collects changed content rows during :meth:`batch` and paints them when it ends."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._queued: dict[LineWidget, set[int]] | None = None
        #: Lines written directly / handed to Textual's refresh (tests read them).
        self.direct = 0
        self.deferred = 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Panels redrawn inside are painted together, in one terminal write, at the end."""
        if self._queued is not None:  # nested: the outer batch paints
            yield
            return
        self._queued = {}
        try:
            yield
        finally:
            queued, self._queued = self._queued, None
            if queued:
                self._paint(queued)

    def rows(self, widget: LineWidget, rows: list[int]) -> None:
        """Content rows of ``widget`` whose drawing changed."""
        if self._queued is None:
            self._paint({widget: set(rows)})
        else:
            self._queued.setdefault(widget, set()).update(rows)

    def _paint(self, queued: dict[LineWidget, set[int]]) -> None:
        screen = self._screen()
        covered: list[Region] = []
        visible = screen._compositor.visible_widgets if screen is not None else {}
        chops: Chops = {}
        for widget, (region, clip) in visible.items():  # front to back
            rows = queued.pop(widget, None)
            shown = region.intersection(clip)
            if rows is not None and not self._direct(widget, rows, region, shown, covered, chops):
                self._defer(widget, rows)
            covered.append(shown)
            if not queued:
                break
        for widget, rows in queued.items():  # not on the current screen's map
            self._defer(widget, rows)
        if chops:
            self._write(screen, chops)

    def _screen(self) -> Screen | None:
        """The screen to paint on, or None when only Textual may paint now."""
        app = self.app
        if app._batch_count or app.is_inline or not app.is_running:
            return None
        screen = app.screen
        if screen._layout_required or screen._compositor._full_map_invalidated:
            return None
        return screen

    def _direct(
        self,
        widget: LineWidget,
        rows: set[int],
        region: Region,
        shown: Region,
        covered: list[Region],
        chops: Chops,
    ) -> bool:
        """Render ``rows`` into ``chops``; False if they cannot be painted here."""
        if widget._repaint_required or widget._layout_required or not widget.display:
            return False
        frame = widget._rows.frame_at(region.size)
        top = region.y + (frame.top if frame is not None else widget.content_offset.y)
        every = sorted(top + row for row in rows)
        lines = [y for y in every if shown.y <= y < shown.bottom]
        if len(lines) < len(every):
            # Lines scrolled off or below the panel's height are only forgotten, as Textual
            # does: the compositor draws them again from the drawing when they come into view.
            widget._styles_cache.set_dirty(
                *(Region(0, y - region.y, region.width, 1) for y in every if y not in lines)
            )
        if not lines:
            return True
        band = Region(shown.x, lines[0], shown.width, lines[-1] - lines[0] + 1)
        if any(band.overlaps(other) for other in covered):
            return False
        fast = None
        if frame is not None and shown.width == region.width:
            fast = widget._rows.paint([y - region.y for y in lines])
        if fast is not None:
            for y, segments in zip(lines, fast):
                chops.setdefault(y, {})[band.x] = (segments, band.width)
        else:
            widget._styles_cache.set_dirty(
                *(Region(0, y - region.y, region.width, 1) for y in lines)
            )
            strips = widget.render_lines(band.translate((-region.x, -region.y)))
            for y in lines:
                strip = strips[y - band.y]
                chops.setdefault(y, {})[band.x] = (list(strip), strip.cell_length)
        self.direct += len(lines)
        return True

    def _defer(self, widget: LineWidget, rows: set[int]) -> None:
        width = widget.content_size.width
        widget.refresh(*(Region(0, y, width, 1) for y in sorted(rows)))
        self.deferred += len(rows)

    def _write(self, screen: Screen | None, chops: Chops) -> None:
        """One update of every line: a cursor move and the styled text of each part, as the
        compositor writes its spans (``ChopsUpdate``), in one synchronized write."""
        if screen is None:
            return
        console = self.app.console
        system = console._color_system or ColorSystem.TRUECOLOR
        render, move_to = Strip.render_style, Control.move_to
        out: list[str] = []
        for y in sorted(chops):
            for x, (segments, _) in sorted(chops[y].items()):
                out.append(move_to(x, y).segment.text)
                out.extend(
                    text if style is None else render(style, text, system)
                    for text, style, _ in segments
                )
        self.app._display(screen, _Written("".join(out)))


class _Written(CompositorUpdate):
    """Terminal text already rendered (``App._display`` adds the cursor and the sync)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def render_segments(self, console: Console) -> str:
        return self.text
