"""The painter writes a panel's changed lines at once, exactly as Textual would have drawn them,
and leaves to Textual every line something else is drawn over."""

from __future__ import annotations

from textual._compositor import CompositorUpdate
from textual._styles_cache import StylesCache
from textual.app import App, ComposeResult
from textual.geometry import Region
from textual.screen import ModalScreen
from textual.widgets import Static

from tests.tui.screen import async_test, screen_text
from tests.tui.test_line_widgets import Board
from tui.widgets.paint import LinePainter


class PaintedApp(App[None]):
    CSS = "Screen { layers: base above; } #cover { layer: above; width: 12; height: 3; }"

    def __init__(self, *, covered: bool = False) -> None:
        super().__init__()
        self.painter = LinePainter(self)
        self.covered = covered
        self.written: list[str] = []

    def compose(self) -> ComposeResult:
        yield Board()
        if self.covered:
            yield Static("on top", id="cover")

    def _display(self, screen, renderable) -> None:
        if isinstance(
            renderable, CompositorUpdate
        ):  # what reaches the terminal (headless: nothing)
            self.written.append(renderable.render_segments(self.console))
        super()._display(screen, renderable)


def _textual_lines(board: Board) -> list[list]:
    """The panel as Textual's own styles cache draws it, from scratch."""
    return [list(s) for s in StylesCache().render_widget(board, board.region.size.region)]


@async_test
async def test_a_changed_line_is_written_at_once_as_textual_draws_it():
    app = PaintedApp()
    async with app.run_test(size=(40, 10)) as pilot:
        board = app.query_one(Board)
        await pilot.pause()
        board.painted.clear()
        app.written.clear()
        board.texts[1] = "BETA"
        with app.painter.batch():
            board.redraw()
            assert app.written == []  # painted when the batch ends, in one write
        assert (app.painter.direct, app.painter.deferred) == (1, 0)
        assert board.painted == [1]
        (written,) = app.written
        assert "BETA" in written and "gamma" not in written  # only the changed line
        # Content row 1 is screen line 3 (under the border), drawn as Textual's own path
        # (border, padding, line filters) draws it from scratch.
        (line,) = StylesCache().render_widget(board, Region(0, 2, board.region.width, 1))
        assert written.startswith("\x1b[3;1H" + line.render(app.console))
        assert not app.screen._dirty_widgets  # no compositor pass was asked for
        await pilot.pause()
        cached = board._styles_cache.render_widget(board, board.region.size.region)
        assert [list(s) for s in cached] == _textual_lines(board)
        assert "BETA" in screen_text(app)


@async_test
async def test_lines_with_something_drawn_over_them_go_through_textual():
    app = PaintedApp(covered=True)
    async with app.run_test(size=(40, 10)) as pilot:
        board = app.query_one(Board)
        await pilot.pause()
        app.written.clear()
        board.texts[0] = "ALPHA"  # content row 0 is screen line 1, under the cover
        board.redraw()
        assert (app.painter.direct, app.painter.deferred) == (0, 1)
        assert app.written == []
        await pilot.pause()
        text = screen_text(app)
        assert "on top" in text and "ALPHA" not in text.splitlines()[1][:12]
        board.texts[2] = "GAMMA"  # screen line 3: below the cover
        board.redraw()
        assert (app.painter.direct, app.painter.deferred) == (1, 1)
        assert "GAMMA" in app.written[-1]


class Modal(ModalScreen[None]):
    def compose(self) -> ComposeResult:
        yield Static("modal")


@async_test
async def test_panels_behind_another_screen_are_left_to_textual():
    app = PaintedApp()
    async with app.run_test(size=(40, 10)) as pilot:
        board = app.query_one(Board)
        await pilot.pause()
        await app.push_screen(Modal())
        await pilot.pause()
        app.written.clear()
        board.texts[1] = "BETA"
        board.redraw()
        assert (app.painter.direct, app.painter.deferred) == (0, 1)
        assert app.written == []
        app.pop_screen()
        await pilot.pause()
        assert "BETA" in screen_text(app)
