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

from typing import Any

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual._styles_cache import StylesCache
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.widget import Widget

from tui.widgets.paint import LinePainter

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
        if "\n" not in text:  # the usual case: a part of the current line
            if text:
                self._parts.append((text, part_style))
            return self
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


def to_segments(line: Line, width: int, base: Style, ellipsis: bool) -> tuple[list[Segment], int]:
    """One line as segments of at most ``width`` cells (cut with ``…`` when longer), and how
    many cells they take."""
    segments = [Segment(text, base + style if style is not None else base) for text, style in line]
    cells = sum(cell_len(text) for text, _ in line)
    if cells <= width:
        return segments, cells
    if ellipsis and width > 0:
        last = line[-1][1] if line else None
        return [*_cut(segments, width - 1), Segment(ELLIPSIS, base + last if last else base)], width
    return _cut(segments, width), width


def _cut(segments: list[Segment], width: int) -> list[Segment]:
    """The first ``width`` cells of segments longer than that (``Strip.crop(0, width)``, without
    building strips: most ticks cut a few lines of every card)."""
    out: list[Segment] = []
    pos = 0
    for segment in segments if width > 0 else ():
        end = pos + cell_len(segment.text)
        if end >= width:
            out.append(segment.split_cells(width - pos)[0])
            break
        out.append(segment)
        pos = end
    return out


def to_strip(line: Line, width: int, base: Style, ellipsis: bool) -> Strip:
    """One line as a strip of at most ``width`` cells; cut with ``…`` when it is longer."""
    segments, cells = to_segments(line, width, base, ellipsis)
    return Strip(segments, cells)


class _Frame:
    """What surrounds every content row of a panel (its border and padding, as segments), as
    Textual drew it for the first content row after a restyle or resize."""

    __slots__ = ("key", "top", "bottom", "left", "right", "fill", "base", "width", "inner")

    def __init__(self, key: tuple, top: int, bottom: int, left: list, right: list, fill: Style,
                 base: Style, width: int, inner: int) -> None:  # fmt: skip
        self.key, self.top, self.bottom = key, top, bottom
        self.left, self.right, self.fill, self.base = left, right, fill, base
        self.width, self.inner = width, inner


class _RowStyles(StylesCache):
    """Textual's styles cache, but a changed content row of a :class:`LineWidget` is its frame
    around the row's segments, one strip built once: Textual's own row path (border boxes,
    padding, colour arithmetic, theme lookups, three intermediate strips) was most of the
    refresh cost of a panel whose lines change every tick. Panels with effects the frame does
    not reproduce (tint, opacity, hatch, outline) take Textual's path for every row."""

    def __init__(self, widget: LineWidget) -> None:
        super().__init__()
        self._widget = widget
        self._frame: _Frame | None = None
        self._plain = True  # no effect the frame does not reproduce (known after a restyle)

    def restyled(self) -> None:
        self._frame = None

    def clear(self) -> None:
        super().clear()
        self._frame = None

    def render_line(self, styles: Any, y: int, size: Size, content_size: Size, padding: Any,
                    base_background: Any, background: Any, *rest: Any) -> Strip:  # fmt: skip
        key = (size, content_size, padding, base_background, background, rest[-3])
        frame = self._frame
        if frame is None or frame.key != key:
            frame = self._frame = self._learn(
                styles, size, content_size, padding, base_background, background, key, rest
            )
        if frame is None or not frame.top <= y < frame.bottom:
            return super().render_line(
                styles, y, size, content_size, padding, base_background, background, *rest
            )
        segments, cells = self._widget.row(y - frame.top, frame.base)
        if cells < frame.inner:  # as Textual pads a short row: in the inner background
            segments.append(Segment(" " * (frame.inner - cells), frame.fill))
        return Strip([*frame.left, *segments, *frame.right], frame.width)

    def frame_at(self, size: Size) -> _Frame | None:
        """The frame learned at the last render, if the panel still has that outer ``size``
        and was drawn at that frame's content size (the redraw asking for a paint just drew)."""
        frame = self._frame
        if frame is None or frame.key[0] != size or self._widget._drawn_size != frame.key[1]:
            return None
        return frame

    def paint(self, lines: list[int]) -> list[list[Segment]] | None:
        """The widget's ``lines`` (widget coordinates) as the segments Textual would draw
        there, its line filters applied, built straight from the frame of the last render
        (call :meth:`frame_at` first); None when only Textual's own path knows them. The lines
        are left dirty in the cache, so a later compositor pass draws them again from the
        drawing (no strip is built).

        The frame's colours are trusted: any restyle of the panel or an ancestor forgets it."""
        frame, widget = self._frame, self._widget
        if frame is None or not all(frame.top <= y < frame.bottom for y in lines):
            return None
        if widget.styles.padding != frame.key[2]:
            return None
        filters, background = widget.get_line_filters(), frame.key[4]
        out = []
        widget._fresh = True  # drawn at this size by the redraw that asked for this paint
        try:
            for y in lines:
                segments, cells = widget.row(y - frame.top, frame.base)
                if cells < frame.inner:
                    segments.append(Segment(" " * (frame.inner - cells), frame.fill))
                segments = [*frame.left, *segments, *frame.right]
                for line_filter in filters:
                    segments = line_filter.apply(segments, background)
                out.append(segments)
        finally:
            widget._fresh = False
        self._dirty_lines.update(lines)
        return out

    def _learn(self, styles: Any, size: Size, content_size: Size, padding: Any,
               base_background: Any, background: Any, key: tuple, rest: tuple) -> _Frame | None:  # fmt: skip
        """The frame of this size and these colours, cut from Textual's own rendering of a
        blank content row; None when the panel uses effects the frame would not reproduce."""
        opacity = rest[-3]
        outline = any(edge for edge, _ in styles.outline)
        hatch = styles.has_rule("hatch") and styles.hatch != "none"
        if opacity != 1.0 or styles.tint.a or styles.text_opacity != 1.0 or outline or hatch:
            return None
        gutter = styles.gutter
        width, height = size
        inner = content_size.width
        if width != gutter.left + inner + gutter.right or not content_size.height:
            return None
        blank = super().render_line(
            styles, gutter.top, size, content_size, padding, base_background, background,
            lambda _y: Strip.blank(inner), *rest[1:],
        )  # fmt: skip
        inner_style, _ = self.get_inner_outer(base_background, background)
        return _Frame(
            key,
            gutter.top,
            gutter.top + content_size.height,
            list(blank.crop(0, gutter.left)),
            list(blank.crop(width - gutter.right, width)),
            inner_style.rich_style,
            self._widget.rich_style,
            width,
            inner,
        )


class LineWidget(Widget):
    """Subclasses implement :meth:`draw`; :meth:`redraw` (not ``refresh``) after a change of
    data repaints the lines that differ. Style and size changes repaint everything, as usual."""

    #: Cut long lines with ``…`` (``text-overflow: ellipsis``); False crops them.
    ELLIPSIS = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._drawn: list[Line] | None = None
        self._drawn_size = Size(-1, -1)
        self._fresh = False
        self._strips: dict[int, Strip] = {}
        self._base: Style | None = None
        self._parts: dict[str, Style] = {}
        self._styles_cache = self._rows = _RowStyles(self)

    def draw(self, width: int) -> Lines:
        """The content at ``width`` cells."""
        raise NotImplementedError

    def _content(self) -> list[Line]:
        if self._fresh and self._drawn is not None:
            return self._drawn
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
        if not changed:
            return
        painter = getattr(self.app, "painter", None)
        if isinstance(painter, LinePainter):
            painter.rows(self, changed)  # written at once, or through refresh() when it must
        else:
            self.refresh(*(Region(0, y, width, 1) for y in changed))

    def part_style(self, name: str) -> Style:
        """The rich style of component class ``name``, looked up again only after a restyle.

        Textual forgets its own component-style cache on every ``refresh()``, that is on every
        tick of a panel that changes, and the lookup walks the panel's CSS again."""
        style = self._parts.get(name)
        if style is None:
            style = self._parts[name] = self.get_component_rich_style(name)
        return style

    def notify_style_update(self) -> None:
        """Classes, focus or theme changed: every line may look different (a drawing made
        between a class change and the restyle may hold the old component styles)."""
        super().notify_style_update()
        self._drawn = None
        self._strips.clear()
        self._parts.clear()
        self._rows.restyled()

    def row(self, y: int, base: Style) -> tuple[list[Segment], int]:
        """Content row ``y`` as segments at the width drawn, and the cells they take (a row
        below the drawing is blank in ``base``, the panel's style)."""
        lines = self._content()
        width = self._drawn_size.width  # the size _content() drew at
        if y < len(lines):
            return to_segments(lines[y], width, base, self.ELLIPSIS)
        return [Segment(" " * width, base)], width

    def render_line(self, y: int) -> Strip:
        strip = self._strips.get(y)
        if strip is None:
            if not self._strips:  # a full paint: the panel's style may have changed
                self._base = self.rich_style
            strip = self._strips[y] = Strip(*self.row(y, self._base or self.rich_style))
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
