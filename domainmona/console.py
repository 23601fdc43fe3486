"""Shared rich consoles and the one progress-bar style every long job uses."""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from domainmona import interrupts

FILE_WIDTH = 1000  # columns when writing to a file or pipe: no table cell or line is cut or wrapped there


class _Console(Console):
    """A rich Console that keeps the terminal's width on a terminal, and never cuts a name when its output
    is a file or a pipe (`domainmona adapters report ... > report.txt`): rich would otherwise take the width
    of whichever standard stream is a terminal, or 80 columns, and shorten table cells to fit."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(FILE_WIDTH, size.height)


console = _Console()
err_console = _Console(stderr=True)


class _Progress(Progress):
    """Each step of a long job is also where a Ctrl-C that a library swallowed ends it."""

    def update(self, *args, **kwargs) -> None:
        interrupts.check()
        super().update(*args, **kwargs)

    def advance(self, *args, **kwargs) -> None:
        interrupts.check()
        super().advance(*args, **kwargs)


def progress(transient: bool = False) -> Progress:
    """A progress bar with count, elapsed and remaining time; use as a context manager."""
    return _Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=transient)
