"""Ctrl-C that no library can lose.

Python turns SIGINT into KeyboardInterrupt at the next bytecode it runs, wherever that is. Code that catches
every exception there — a bare `except:` around an optional import, a C extension that clears errors, type
creation that wraps a `__set_name__` error in RuntimeError — swallows or changes it: a Ctrl-C pressed while
the CLI imports torch once let `geo-demo` run to its end (exit 0), once ended it with a RuntimeError
traceback. The CLI's handler therefore also records the press; `check()` raises it again where work is
committed (an output renamed into place, each progress step), and the CLI reads any failure after a press
as the interrupt.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_pressed = False


def _on_sigint(signum, frame) -> None:
    global _pressed
    _pressed = True
    raise KeyboardInterrupt


def check() -> None:
    """Raise KeyboardInterrupt again if Ctrl-C was pressed, whatever became of the first one."""
    if _pressed:
        raise KeyboardInterrupt


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """Around a command: Ctrl-C raises KeyboardInterrupt as usual and is also remembered. Only the main
    thread can set a handler, and only Python's own is replaced (not one a caller installed)."""
    global _pressed
    _pressed = False
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
