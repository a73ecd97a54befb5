"""``?``: every key binding of the current screen and the app, read from the bindings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def binding_rows(
    bindings: list[Binding], display: Callable[[Binding], str]
) -> list[tuple[str, str]]:
    """(keys, description) per action, keys merged, in declaration order."""
    rows: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    for binding in bindings:
        for key in binding.key.split(","):
            rows.setdefault(binding.action, []).append(
                display(dataclasses.replace(binding, key=key.strip()))
            )
        labels.setdefault(binding.action, binding.tooltip or binding.description)
    return [(" / ".join(keys), labels[action]) for action, keys in rows.items()]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, title: str, sections: list[tuple[str, list[Binding]]]) -> None:
        """``sections``: (heading, bindings); the first heading is not shown."""
        super().__init__()
        self.title_text = title
        self.sections = sections

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for index, (heading, bindings) in enumerate(self.sections):
            if index:
                table.add_row("", "")
                table.add_row("", Text(f"— {heading} —", style="bold italic"))
            for keys, description in binding_rows(bindings, self.app.get_key_display):
                table.add_row(keys, description)
        table.add_row("", "")
        table.add_row(
            "mouse",
            "click a card, process or finding to select it (a selected "
            "finding again: evidence); click a process header to sort; "
            "click the time cursor to seek",
        )
        with VerticalScroll(id="help-box") as box:
            box.border_title = self.title_text
            yield Static(table)
