"""Full-screen chart of one metric of one entity, with a zoomable, pannable time window.

History comes from ``reader.history`` in a thread worker (its own DuckDB cursor); the result
arrives as a replaceable message, so holding ``+`` never queues queries behind each other.
While the chart follows a live run, each tick queries only what came after the last point it
holds (the whole window was re-read every second before: a full scan of the run at "whole
run" zoom); a change of metric, zoom or position reads the window again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Static

from agent.catalog import CATALOG
from agent.reader import Reader, Series
from tui.format import duration, fmt, unit_label

#: Zoom levels of the chart's time window (seconds); ``None`` is the whole run.
ZOOM_LEVELS: tuple[float | None, ...] = (30.0, 60.0, 300.0, 900.0, 3600.0, None)
_EIGHTHS = " ▁▂▃▄▅▆▇█"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(ts))


class HistoryLoaded(Message):
    def __init__(
        self, token: int, series: Series, start: float, end: float, key: tuple = ()
    ) -> None:
        super().__init__()
        self.token = token
        self.series = series
        self.start = start
        self.end = end
        #: (metric, zoom) the series was read for: a later tick may extend it.
        self.key = key

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HistoryLoaded)


def bucket_means(series: Series, start: float, end: float, columns: int) -> np.ndarray:
    """Mean value per column over [start, end]; NaN where a column has no sample."""
    out = np.full(columns, np.nan)
    if not len(series) or columns <= 0 or end <= start:
        return out
    index = ((series.ts - start) / (end - start) * columns).astype(np.int64)
    keep = (index >= 0) & (index < columns)
    index, values = index[keep], series.values[keep]
    sums = np.bincount(index, weights=values, minlength=columns)
    counts = np.bincount(index, minlength=columns)
    filled = counts > 0
    out[filled] = sums[filled] / counts[filled]
    # Columns narrower than the sampling interval: hold the previous value between samples.
    seen = np.flatnonzero(filled)
    if len(seen):
        span = slice(seen[0], seen[-1] + 1)
        held = np.maximum.accumulate(np.where(filled[span], np.arange(span.stop - span.start), 0))
        out[span] = out[span][held]
    return out


class Chart(Widget):
    """Vertical bars with eighth-cell resolution, max label on top, time labels below."""

    COMPONENT_CLASSES = {"chart--bars", "chart--axis"}

    def __init__(self) -> None:
        super().__init__(id="chart")
        self.metric = ""
        self.series = Series.empty()
        self.start = self.end = 0.0

    def plot(self, metric: str, series: Series, start: float, end: float) -> None:
        self.metric, self.series, self.start, self.end = metric, series, start, end
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size.width - 10, self.content_size.height - 1
        if width < 4 or height < 2 or not self.metric:
            return Text("")
        columns = bucket_means(self.series, self.start, self.end, width)
        finite = columns[np.isfinite(columns)]
        unit = CATALOG[self.metric].unit
        top = 1.0 if unit == "1" else float(finite.max()) if len(finite) else 1.0
        top = top if top > 0 else 1.0
        levels = np.where(np.isfinite(columns), np.clip(columns / top, 0, 1) * height * 8, -1)
        bars = self.get_component_rich_style("chart--bars")
        axis = self.get_component_rich_style("chart--axis")
        per_second = CATALOG[self.metric].is_counter
        out = Text(no_wrap=True)
        for row in range(height):
            floor = (height - 1 - row) * 8
            label = (
                fmt(self.metric, top, per_second=per_second)
                if row == 0
                else fmt(self.metric, 0.0, per_second=per_second)
                if row == height - 1
                else ""
            )
            out.append(f"{label[:9]:>9}┤", axis)
            cells = "".join(
                " " if lv < 0 else _EIGHTHS[int(min(max(lv - floor, 0), 8))] for lv in levels
            )
            out.append(cells + "\n", bars)
        left, right = _clock(self.start), _clock(self.end)
        out.append(" " * 10 + left + right.rjust(max(width - len(left), 0)), axis)
        return out


class TimeSeriesScreen(Screen[None]):
    """``entity``'s metrics; ``end_time`` gives the live edge (latest tick or replay cursor)."""

    BINDINGS = [
        Binding("escape,g", "app.pop_screen", "Back"),
        Binding("up,k", "metric(-1)", "Prev metric"),
        Binding("down,j", "metric(1)", "Next metric"),
        Binding("plus,equals_sign", "zoom(-1)", "Zoom in"),
        Binding("minus", "zoom(1)", "Zoom out"),
        Binding("left,h", "pan(-1)", "Older"),
        Binding("right,l", "pan(1)", "Newer"),
        Binding("f", "follow", "Follow"),
    ]

    def __init__(
        self,
        reader: Reader,
        entity: str,
        metrics: Sequence[str],
        end_time: Callable[[], float],
        *,
        metric: str | None = None,
        window_s: float = 300.0,
    ) -> None:
        super().__init__()
        self.reader = reader
        self.entity = entity
        self.metrics = list(metrics)
        self.metric_index = self.metrics.index(metric) if metric in self.metrics else 0
        self.end_time = end_time
        self.zoom = min(
            range(len(ZOOM_LEVELS) - 1), key=lambda i: abs((ZOOM_LEVELS[i] or 0) - window_s)
        )
        self.offset_s = 0.0  # how far the window's end sits before the live edge
        self._token = 0
        #: The last series shown while following, and what it was read for.
        self._shown: HistoryLoaded | None = None

    @property
    def metric(self) -> str:
        return self.metrics[self.metric_index]

    def compose(self) -> ComposeResult:
        yield Static(id="chart-title")
        yield Chart()
        yield Static(id="chart-stats")
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        if self.reader.live:
            self.set_interval(max(self.reader.run.interval, 0.5), self._follow_tick)

    def _follow_tick(self) -> None:
        if self.offset_s != 0.0:
            return
        shown = self._shown
        start, end = self.window()
        if shown is None or shown.key != (self.metric, self.zoom) or not len(shown.series):
            self.reload()
            return
        self._token += 1
        self._extend(self._token, shown.series, start, end)

    @work(thread=True, exclusive=True, group="history")
    def _extend(self, token: int, held: Series, start: float, end: float) -> None:
        """The held series, without what slid out of the window, plus what came after its
        last point (counters: rates from the sample before it, as a full read gives)."""
        last = float(held.ts[-1])
        tail = self.reader.history(self.entity, self.metric, last, end)
        old, new = held.ts >= start, tail.ts > last
        series = Series(
            np.concatenate([held.ts[old], tail.ts[new]]),
            np.concatenate([held.values[old], tail.values[new]]),
        )
        self.post_message(HistoryLoaded(token, series, start, end, (self.metric, self.zoom)))

    def window(self) -> tuple[float, float]:
        edge = self.end_time()
        span = ZOOM_LEVELS[self.zoom]
        if span is None:
            return self.reader.run.started, edge
        end = edge - self.offset_s
        return end - span, end

    def reload(self) -> None:
        self._token += 1
        start, end = self.window()
        entry = CATALOG[self.metric]
        span = ZOOM_LEVELS[self.zoom]
        self.query_one("#chart-title", Static).update(
            Text.assemble(
                (f"{self.entity} · {self.metric}", "bold"),
                f" ({unit_label(self.metric)})  ",
                f"window {duration(span) if span else 'whole run'}",
                f"  ·  {duration(self.offset_s)} back" if self.offset_s else "  ·  following",
                f"\n{entry.description}" + (" Shown per second." if entry.is_counter else ""),
            )
        )
        self._load(self._token, start, end)

    @work(thread=True, exclusive=True, group="history")
    def _load(self, token: int, start: float, end: float) -> None:
        series = self.reader.history(self.entity, self.metric, start, end)
        self.post_message(HistoryLoaded(token, series, start, end, (self.metric, self.zoom)))

    def on_history_loaded(self, message: HistoryLoaded) -> None:
        if message.token != self._token:
            return
        self._shown = message
        self.query_one(Chart).plot(self.metric, message.series, message.start, message.end)
        values = message.series.values
        per_second = CATALOG[self.metric].is_counter
        if len(values):
            stats = "  ".join(
                f"{name} {fmt(self.metric, float(v), per_second=per_second)}"
                for name, v in (
                    ("min", values.min()),
                    ("mean", values.mean()),
                    ("max", values.max()),
                    ("last", values[-1]),
                )
            )
        else:
            stats = "no samples in this window"
        self.query_one("#chart-stats", Static).update(f"{len(values)} points · {stats}")

    def action_metric(self, step: int) -> None:
        self.metric_index = (self.metric_index + step) % len(self.metrics)
        self.reload()

    def action_zoom(self, step: int) -> None:
        self.zoom = min(max(self.zoom + step, 0), len(ZOOM_LEVELS) - 1)
        self.reload()

    def action_pan(self, direction: int) -> None:
        span = ZOOM_LEVELS[self.zoom]
        if span is None:
            return
        self.offset_s = max(0.0, self.offset_s - direction * span / 2)
        self.reload()

    def action_follow(self) -> None:
        self.offset_s = 0.0
        self.reload()
