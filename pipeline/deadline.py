"""`--command-timeout`: the whole command ends when its time is up, as skopeo's does.

When the time is up the main thread gets a `CommandTimeout` (from a SIGALRM handler), so the
command unwinds as it does for any error: its with-blocks close and the error is one line. Worker
threads cannot be interrupted that way; if the command has not ended `GRACE` seconds later (a
transfer still streaming, a pool waiting for it) the process exits there, with the same line.
Nothing a later run relies on is half-written by that: tags and records are written only after
the data they name, and `bale gc` removes uploads left open.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

from pipeline.errors import CommandTimeout

GRACE = 5.0
"""Seconds the command gets to unwind after its time is up before the process exits."""


@contextmanager
def command_deadline(seconds: float | None) -> Iterator[None]:
    """Raise `CommandTimeout` in the main thread after `seconds` (None or 0: no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    message = f"command timed out after {seconds:g} s (--command-timeout)"
    unwound = threading.Event()

    def end_process() -> None:
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError, ValueError):
                stream.flush()
        # Straight to the descriptor: a progress display may have wrapped sys.stderr, and it
        # hid the cursor, which is shown again.
        out = "\x1b[?25h\n" if os.isatty(2) else ""
        if not unwound.is_set():  # else the error line is out already
            out += f"bale: error: {message}\n"
        with suppress(OSError):
            os.write(2, out.encode())
        os._exit(CommandTimeout.exit_code)

    watchdog = threading.Timer(GRACE, end_process)
    watchdog.daemon = True

    def expire(_signum: int, _frame: FrameType | None) -> None:
        if not watchdog.is_alive():
            watchdog.start()
        raise CommandTimeout(message)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        unwound.set()
        if not watchdog.is_alive():
            watchdog.cancel()
