"""Framework logs (mmengine, mmdet/mmrotate, MONAI, GDAL through rasterio, Python warnings) go to a log file,
not to the terminal, which is the user's: progress, key figures, the result.

A command that runs a framework opens `framework_log(folder)` once, around its work: every record of the
standard `logging` tree and every Python warning lands in `folder/domainmona.log` (named in one line when
its first record is written, at the start of the framework work); loggers that print to stdout through
handlers of their own and do not propagate (mmengine's) are sent there by `route`, and what frameworks
`print` at import by `printed_to_log` (domainmona's own warnings are printed by the commands, not logged). The root option `--verbose`/`-v` keeps the frameworks' terminal
output as well.

Records wait in memory until the command has claimed the folder (its `.domainmona.json` record exists, which
`claim_dir` writes once the checks have passed): a refused run leaves no log file, not even in a folder that
existed before, and prints nothing but its one error line.
"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

from domainmona.console import err_console
from domainmona.io import LOG, is_claimed

PENDING_LIMIT = 10_000  # records kept while the folder does not exist yet; older ones are dropped
_state: dict = {'verbose': False, 'handler': None, 'routed': []}


def set_verbose(verbose: bool) -> None:
    """The root option `--verbose`: framework logs on the terminal as well as in the file."""
    _state['verbose'] = verbose


class FolderLog(logging.Handler):
    """Appends records to `path` once its folder is claimed; earlier records wait (bounded) in memory."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.file = None
        self.closed = False
        self.pending: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter('%(asctime)s %(name)s %(levelname)s: %(message)s'))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.closed:  # the command is over: a later record belongs to no run of it
                return
            if self.file is None and not is_claimed(self.path.parent):  # a data folder is never written to
                self.pending = self.pending[-PENDING_LIMIT + 1:] + [record]
                return
            if self.file is None:
                self.file = open(self.path, 'a', encoding='utf-8')  # noqa: SIM115 (closed in close())
                err_console.print(f"[dim]framework log: {self.path}[/]", highlight=False, soft_wrap=True)
                for waiting in self.pending:
                    self.file.write(self.format(waiting) + '\n')
                self.pending = []
            self.file.write(self.format(record) + '\n')
            self.file.flush()
        except Exception:  # a log line must never end a run: logging's own error report
            self.handleError(record)

    def close(self) -> None:
        self.closed = True
        if self.file is not None:
            self.file.close()
            self.file = None
        super().close()


@contextmanager
def framework_log(folder: Path) -> Iterator[Path]:
    """Route framework logging to `folder/domainmona.log` for the duration (a nested call keeps the outer
    file)."""
    if _state['handler'] is not None:
        yield _state['handler'].path
        return
    handler = FolderLog(Path(folder) / LOG)
    root = logging.getLogger()
    level = root.level
    added: list[logging.Handler] = [handler]
    if _state['verbose']:
        added.append(logging.StreamHandler(sys.stderr))
    for each in added:
        root.addHandler(each)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    _state['handler'] = handler
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('default')  # each distinct warning once per place, into the file
            yield handler.path
    finally:
        _state['handler'] = None
        for logger in _state['routed']:
            logger.removeHandler(handler)
        _state['routed'] = []
        logging.captureWarnings(False)
        for each in added:
            root.removeHandler(each)
        root.setLevel(level)
        handler.close()


def route(logger: logging.Logger) -> logging.Logger:
    """Send a non-propagating logger to the open framework log: its terminal handlers are dropped unless
    `--verbose`; returns the logger. A no-op outside `framework_log`."""
    handler = _state['handler']
    if handler is None:
        return logger
    if not _state['verbose']:
        for old in list(logger.handlers):
            if type(old) is logging.StreamHandler:  # the terminal ones (FileHandler is a subclass)
                logger.removeHandler(old)
    if handler not in logger.handlers:
        logger.addHandler(handler)
        _state['routed'].append(logger)
    return logger


class _LogWriter(io.TextIOBase):
    """A text stream whose lines become records of one logger."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.logger.info(line)
        return len(text)


@contextmanager
def printed_to_log(name: str = 'stdout') -> Iterator[None]:
    """What frameworks `print` meanwhile (mmdet's and mmrotate's import-time notices) goes to the open
    framework log as records of logger `name`; unchanged outside `framework_log` or under --verbose."""
    if _state['handler'] is None or _state['verbose']:
        yield
        return
    with redirect_stdout(_LogWriter(logging.getLogger(name))):
        yield
