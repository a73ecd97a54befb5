"""Panels drawn as lines: a change of data repaints (and writes) only the lines that changed."""

from __future__ import annotations

from textual.app import App, ComposeResult

from tests.tui.screen import async_test, screen_text
from tui.widgets.lines import Lines, LineWidget


class Board(LineWidget):
    """Three lines of text; counts which lines were painted."""

    DEFAULT_CSS = "Board { height: auto; border: round white; }"

    def __init__(self) -> None:
        super().__init__()
        self.texts = ["alpha", "beta", "gamma"]
        self.painted: list[int] = []

    def draw(self, width: int) -> Lines:
        return Lines().append("\n".join(self.texts))

    def row(self, y: int, base):
        self.painted.append(y)  # every repaint of a content row draws it here
        return super().row(y, base)


class BoardApp(App[None]):
    def compose(self) -> ComposeResult:
        yield Board()


@async_test
async def test_a_change_of_one_line_repaints_only_that_line():
    app = BoardApp()
    async with app.run_test(size=(40, 10)) as pilot:
        board = app.query_one(Board)
        await pilot.pause()
        assert sorted(set(board.painted)) == [0, 1, 2]
        board.painted.clear()
        board.texts[1] = "BETA"
        board.redraw()
        await pilot.pause()
        assert board.painted == [1]
        assert "BETA" in screen_text(app) and "gamma" in screen_text(app)
        board.painted.clear()
        board.redraw()  # nothing changed: nothing is painted
        await pilot.pause()
        assert board.painted == []


@async_test
async def test_a_new_line_count_relayouts_and_shows_every_line():
    app = BoardApp()
    async with app.run_test(size=(40, 10)) as pilot:
        board = app.query_one(Board)
        await pilot.pause()
        assert board.outer_size.height == 5
        board.texts.append("delta")
        board.redraw()
        await pilot.pause()
        assert board.outer_size.height == 6
        assert "delta" in screen_text(app)


@async_test
async def test_long_lines_end_in_an_ellipsis_at_the_panel_width():
    app = BoardApp()
    async with app.run_test(size=(20, 10)) as pilot:
        board = app.query_one(Board)
        board.texts[0] = "x" * 40
        board.redraw()
        await pilot.pause()
        first = screen_text(app).splitlines()[1]
        assert first == "│" + "x" * 17 + "…│"


def test_lines_split_on_newlines_and_a_trailing_newline_starts_no_line():
    out = Lines().append("a\nb").append("c\n")
    assert out.plain == "a\nbc\n"
    assert [[text for text, _ in line] for line in out.lines()] == [["a"], ["b", "c"]]


def test_style_text_is_parsed_like_rich_text_does():
    (line,) = Lines().append("down", "bold red").append(" ok", "").lines()
    assert line[0][1] is not None and line[0][1].bold and line[0][1].color.name == "red"
    assert line[1] == (" ok", None)


class Marked(LineWidget):
    """One word in a component style that depends on the panel's class."""

    COMPONENT_CLASSES = {"marked--word"}
    DEFAULT_CSS = """
    Marked { height: 1; }
    Marked .marked--word { color: #ff0000; }
    Marked.-hot .marked--word { color: #0000ff; }
    """

    def draw(self, width: int) -> Lines:
        return Lines().append("word", self.get_component_rich_style("marked--word"))


class MarkedApp(App[None]):
    def compose(self) -> ComposeResult:
        yield Marked()


@async_test
async def test_a_class_change_with_new_data_paints_the_new_component_style():
    app = MarkedApp()
    async with app.run_test(size=(20, 3)) as pilot:
        await pilot.pause()
        marked = app.query_one(Marked)
        marked.set_class(True, "-hot")
        marked.redraw()  # drawn before the restyle: must not keep the old colour
        await pilot.pause()
        colours = {seg.style.color.triplet.hex for seg in marked.render_line(0) if seg.text.strip()}
        assert colours == {"#0000ff"}


class Framed(LineWidget, can_focus=True):
    """A bordered, padded panel with a short, a long and a missing row."""

    DEFAULT_CSS = """
    Framed { height: 6; border: round $primary; padding: 0 1; background: $panel; }
    Framed:focus { border: double $accent; }
    """

    def draw(self, width: int) -> Lines:
        return Lines().append("short\n", "bold").append("y" * 60, "italic")


class FramedApp(App[None]):
    AUTO_FOCUS = None

    def compose(self) -> ComposeResult:
        yield Framed()


@async_test
async def test_a_content_row_is_painted_exactly_as_textual_paints_it():
    from textual._styles_cache import StylesCache

    app = FramedApp()
    async with app.run_test(size=(30, 8)) as pilot:
        panel = app.query_one(Framed)
        for focused in (False, True):
            if focused:
                panel.focus()
            await pilot.pause()
            whole = panel.region.size.region
            ours = panel._styles_cache.render_widget(panel, whole)
            textual = StylesCache().render_widget(panel, whole)
            assert len(ours) == 6 and ours[0].text.startswith("╔" if focused else "╭")
            assert [list(strip) for strip in ours] == [list(strip) for strip in textual]


class HeaderApp(App[None]):
    def __init__(self, cmdline: list[str]) -> None:
        super().__init__()
        from agent.model import RunInfo

        self.run_info = RunInfo("r1", "demo", 42, cmdline, "/", "h", 0.0, 1.0, "/tmp/x.duckdb")

    def compose(self) -> ComposeResult:
        from tui.widgets.header import RunHeader

        yield RunHeader(self.run_info)


@async_test
async def test_a_command_line_with_newlines_stays_on_the_header_line():
    script = "import os, sys, time\nfor _ in range(3):\n    time.sleep(1)"
    app = HeaderApp(["python", "-c", script])
    async with app.run_test(size=(160, 4)) as pilot:
        await pilot.pause()
        first, second = screen_text(app).splitlines()[:2]
        assert "demo" in first and "python -c import os, sys, time for _ in range(3):" in first
        assert second.strip() == "· db /tmp/x.duckdb"


@async_test
async def test_a_run_name_with_newlines_stays_on_the_header_line():
    """``attach`` of a ``python -c "..."`` process names the run after its command line."""
    app = HeaderApp(["python", "-c", "import os\nprint(1)"])
    app.run_info = app.run_info.__class__(
        **{**app.run_info.__dict__, "name": "python -c import os\nprint(1)"}
    )
    async with app.run_test(size=(160, 4)) as pilot:
        await pilot.pause()
        first, second = screen_text(app).splitlines()[:2]
        assert "python -c import os print(1)" in first and "every 1s" in first
        assert "db /tmp/x.duckdb" in second
