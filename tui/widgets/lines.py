"""Panels drawn as lines of segments (Textual's line API), repainting only the lines that changed.

Every panel of the main screen changes every tick, and a panel that returns a ``rich.text.Text``
from ``render()`` pays, on each refresh, for Textual converting it to its own content, wrapping
it, splitting it into strips and repainting every line with its border. That was most of the
UI's CPU. Here a panel draws into :class:`Lines` (the small part of ``Text``'s API our panels
use), each line becomes a :class:`~textual.strip.Strip` directly, and only lines whose text or
styles differ from the last paint are marked dirty, so an unchanged line is neither rendered
nor written to the terminal again.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.widget import Widget

#: One line as (text, style) parts; equal lines draw the same cells.
Line = tuple[tuple[str, Style | None], ...]
ELLIPSIS = "…"


class Lines:
    """A drawing of one or more lines: ``append(text, style)`` like ``rich.text.Text``."""

    __slots__ = ("_done", "_parts")

    def __init__(self) -> None:
        self._done: list[Line] = []
        self._parts: list[tuple[str, Style | None]] = []

    def append(self, text: str, style: Style | str | None = None) -> Lines:
        """Add ``text`` (newlines start new lines) in ``style`` (a rich Style or style text such
        as ``"bold red"``; ``""`` is none)."""
        part_style = Style.parse(style) if isinstance(style, str) else style
        part_style = part_style or None
        first, *rest = text.split("\n")
        if first:
            self._parts.append((first, part_style))
        for piece in rest:
            self._done.append(tuple(self._parts))
            self._parts = [(piece, part_style)] if piece else []
        return self

    @property
    def plain(self) -> str:
        """The text without styles (callers measure the current line with it)."""
        lines = [*self._done, tuple(self._parts)]
        return "\n".join("".join(text for text, _ in line) for line in lines)

    def lines(self) -> list[Line]:
        """The lines drawn; a trailing newline ends the last line (it starts no empty one)."""
        if self._done and not self._parts:
            return list(self._done)
        return [*self._done, tuple(self._parts)]


def to_strip(line: Line, width: int, base: Style, ellipsis: bool) -> Strip:
    """One line as a strip of at most ``width`` cells; cut with ``…`` when it is longer."""
    strip = Strip(
        [Segment(text, base + style if style is not None else base) for text, style in line]
    )
    if strip.cell_length > width:
        if ellipsis and width > 0:
            last = line[-1][1] if line else None
            strip = Strip(
                [*strip.crop(0, width - 1), Segment(ELLIPSIS, base + last if last else base)],
                width,
            )
        else:
            strip = strip.crop(0, width)
    return strip


class LineWidget(Widget):
    """Subclasses implement :meth:`draw`; :meth:`redraw` (not ``refresh``) after a change of
    data repaints the lines that differ. Style and size changes repaint everything, as usual."""

    #: Cut long lines with ``…`` (``text-overflow: ellipsis``); False crops them.
    ELLIPSIS = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._drawn: list[Line] | None = None
        self._drawn_size = Size(-1, -1)
        self._strips: dict[int, Strip] = {}
        self._base: Style | None = None

    def draw(self, width: int) -> Lines:
        """The content at ``width`` cells."""
        raise NotImplementedError

    def _content(self) -> list[Line]:
        size = self.content_size
        if self._drawn is None or size != self._drawn_size:
            self._drawn = self.draw(max(size.width, 1)).lines()
            self._drawn_size = size
            self._strips.clear()
        return self._drawn

    def redraw(self, *, layout: bool = False) -> None:
        """Draw again now and repaint only the lines that changed (all of them on a layout,
        a change of size, of line count or of the panel's own style)."""
        old, size = self._drawn, self.content_size
        if layout or old is None or not self.is_mounted or size != self._drawn_size:
            self._drawn = None
            self.refresh(layout=layout)
            return
        width = size.width
        new = self.draw(max(width, 1)).lines()
        self._drawn = new
        if len(new) != len(old):
            self._strips.clear()
            self.refresh(layout=len(new) != len(old))
            return
        changed = [y for y, (a, b) in enumerate(zip(old, new)) if a != b]
        for y in changed:
            self._strips.pop(y, None)
        if changed:
            self.refresh(*(Region(0, y, width, 1) for y in changed))

    def notify_style_update(self) -> None:
        """Classes, focus or theme changed: every line may look different (a drawing made
        between a class change and the restyle may hold the old component styles)."""
        super().notify_style_update()
        self._drawn = None
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        lines = self._content()
        strip = self._strips.get(y)
        if strip is None:
            if not self._strips:  # a full paint: the panel's style may have changed
                self._base = self.rich_style
            base = self._base or self.rich_style
            width = self._drawn_size.width  # the size _content() drew at
            strip = (
                to_strip(lines[y], width, base, self.ELLIPSIS)
                if y < len(lines)
                else Strip.blank(width, base)
            )
            self._strips[y] = strip
        return strip

    def render(self) -> Text:
        """The content as one ``Text`` (for selection and tests; painting uses the lines)."""
        out = Text(no_wrap=True, overflow="ellipsis" if self.ELLIPSIS else "crop")
        for y, line in enumerate(self._content()):
            if y:
                out.append("\n")
            for text, style in line:
                out.append(text, style)
        return out

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.draw(max(width, 1)).lines())

    def get_content_width(self, container: Size, viewport: Size) -> int:
        lines = self.draw(max(container.width, 1)).lines()
        return max((sum(len(text) for text, _ in line) for line in lines), default=0)
