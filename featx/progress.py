"""Rich progress bars with items/s and ETA, behind the small ``Progress`` interface."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, ProgressColumn,
                           TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from featx.pipeline import Progress


class ItemsPerSecondColumn(ProgressColumn):
    """Speed in items per second (Rich's own speed column counts bytes)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} img/s" if speed else "- img/s", style="progress.data.speed")


class RichBar(Progress):
    """A Rich progress bar on stderr; silent when stderr is not a terminal and ``quiet``."""

    def __init__(self, console: Console | None = None, unit: str = "img", quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self._bar: RichProgress | None = None
        self._task = None

    def start(self, description: str, total: int) -> None:
        self.stop()
        if self.quiet:
            return
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), ItemsPerSecondColumn(), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=self.console, transient=not sys.stderr.isatty(),
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None and n:
            self._bar.advance(self._task, n)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
