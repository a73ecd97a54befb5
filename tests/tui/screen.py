"""Read what a running Textual app shows, as plain text (for assertions on values)."""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import Awaitable, Callable

from rich.console import Console
from textual.app import App


def screen_text(app: App) -> str:
    """The whole terminal as text lines, the way a user reads it."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system=None,
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text()


def async_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an ``async def`` test on a fresh event loop (no pytest-asyncio needed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper
