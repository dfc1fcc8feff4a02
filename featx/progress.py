"""Progress of long work: a Rich bar on a terminal, a plain line every few seconds elsewhere.

``Progress`` is the small interface the pipeline and the stages call (``start``, ``advance``,
``stop``; silent by default). ``RichBar`` draws a bar with items/s and ETA when stderr is a
terminal; when it is not (a log file, CI, ``nohup``) it becomes a ``LineProgress``, which prints
``description: done/total (pct%) rate UNIT/s, eta`` every ``interval`` seconds and once at the end.
The unit is what is counted (``img``, ``configs``). Work with nothing to do (a total of 0, or every
item done before this run: a complete or fully reused cache) shows no progress at all.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, ProgressColumn,
                           TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class Progress:
    """Progress hooks; the CLI passes a ``RichBar``, the API a silent one."""

    def start(self, description: str, total: int) -> None:  # pragma: no cover - trivial
        pass

    def advance(self, n: int = 1) -> None:  # pragma: no cover - trivial
        pass

    def stop(self) -> None:  # pragma: no cover - trivial
        pass


def _rate(items_per_second: float, unit: str) -> str:
    """``12.5 img/s``; ``0.25 configs/s`` for slow work; ``- img/s`` before the first item."""
    if items_per_second <= 0:
        return f"- {unit}/s"
    return f"{items_per_second:,.1f} {unit}/s" if items_per_second >= 1 else f"{items_per_second:.2g} {unit}/s"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class LineProgress(Progress):
    """One plain line every ``interval`` seconds on ``stream`` (and one when the work stops).

    The rate and ETA count only the items done since ``start`` (a resumed cache starts at its
    rows already done without inflating the rate). No line for work with nothing to do (a total
    of 0, or every item done at once right after ``start``), and the closing line is not printed
    twice when the last periodic one already showed the same count.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 5.0, unit: str = "img",
                 clock=time.monotonic):
        self.stream, self.interval, self.unit, self.clock = stream, interval, unit, clock
        self._description = None

    def start(self, description: str, total: int) -> None:
        self.stop()
        self._description, self.total, self.done = description, int(total), 0
        self._started = self._last = self.clock()
        self._base: int | None = None  # set by the first advance
        self._printed: int | None = None  # the count the last line showed

    def advance(self, n: int = 1) -> None:
        if self._description is None or not n:
            return
        if self._base is None:  # rows done before this run come at once, right after start
            self._base = n if self.clock() - self._started < 0.05 else 0
        self.done += n
        if self.clock() - self._last >= self.interval:
            self._print()

    def stop(self) -> None:
        if self._description is not None:
            nothing_to_do = self.total == 0 or (self.done == self.total and self.done == (self._base or 0))
            if not nothing_to_do and self.done != self._printed:
                self._print()
            self._description = None

    def line(self) -> str:
        elapsed = max(self.clock() - self._started, 1e-9)
        rate = (self.done - (self._base or 0)) / elapsed
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = self.total - self.done
        eta = _duration(left / rate) if rate > 0 and left > 0 else "-" if left > 0 else "done"
        return (f"{self._description}: {self.done}/{self.total}{percent} {_rate(rate, self.unit)}, "
                f"eta {eta}, elapsed {_duration(elapsed)}")

    def _print(self) -> None:
        self._last, self._printed = self.clock(), self.done
        print(self.line(), file=self.stream or sys.stderr, flush=True)


class ItemsPerSecondColumn(ProgressColumn):
    """Speed in ``unit`` per second (Rich's own speed column counts bytes)."""

    def __init__(self, unit: str = "img"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(_rate(task.finished_speed or task.speed or 0.0, self.unit), style="progress.data.speed")


class RichBar(Progress):
    """A Rich progress bar on stderr; a :class:`LineProgress` there when it is not a terminal.

    ``unit`` names what is counted (``img``, ``configs``), in the bar and in the lines alike.
    """

    def __init__(self, console: Console | None = None, unit: str = "img", interval: float | None = None):
        if interval is None:  # seconds between lines off a terminal
            interval = float(os.environ.get("FEATX_PROGRESS_SECONDS", "5"))
        self.console = console or Console(stderr=True)
        self.unit = unit
        self._bar: RichProgress | None = None
        self._task = None
        self._lines = None if self.console.is_terminal else LineProgress(self.console.file, interval, unit)

    def start(self, description: str, total: int) -> None:
        self.stop()
        if self._lines is not None:
            self._lines.start(description, total)
            return
        if not total:  # nothing to do: no bar
            return
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), ItemsPerSecondColumn(self.unit), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=self.console, transient=not sys.stderr.isatty(),
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)
        self._started, self._base = time.monotonic(), None

    def advance(self, n: int = 1) -> None:
        if self._lines is not None:
            self._lines.advance(n)
        elif self._bar is not None and n:
            if self._base is None and time.monotonic() - self._started < 0.05:
                # Items done before this run (a resumed cache's rows) come at once: not part of the speed.
                self._base = n
                self._bar.reset(self._task, completed=n)
                return
            self._base = self._base or 0
            self._bar.advance(self._task, n)

    def stop(self) -> None:
        if self._lines is not None:
            self._lines.stop()
        if self._bar is not None:
            task = self._bar.tasks[0]
            if task.completed >= (task.total or 0) and task.completed == (self._base or 0):
                self._bar.remove_task(self._task)  # everything was done before: no bar left on screen
            self._bar.stop()
            self._bar = None
