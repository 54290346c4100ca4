"""`--command-timeout`: the whole command ends when its time is up, as skopeo's does.

When the time is up (a SIGALRM) the run's cancel token is set, as Ctrl-C sets it
(`pipeline/transfer/cancel.py`): transfers stop at their next read or wait and clean up (a
multipart upload is aborted, an upload session cancelled), the batch loop reports what was cut
or never started as `interrupted` ("command timed out after N s"), the report is written, and the
exit code is 124. A command still running `UNWIND` seconds later is blocked where the token is not
seen (a request of the main thread's own: `inspect` on a registry that says nothing): the main
thread then gets a `CommandTimeout` and unwinds as for any error, in one line; unless it is
waiting for the batch loop or writing the report (`CancelToken.awaited`).

A transfer stuck in a socket read sees the token only when the read returns; if the command
has not ended `GRACE` seconds after the time was up the process exits there, with the same line.
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
from pipeline.transfer.cancel import RUN

UNWIND = 2.0
"""Seconds the run gets to stop on its cancel token before the main thread is interrupted."""
GRACE = 5.0
"""Seconds the command gets to unwind after its time is up before the process exits."""


@contextmanager
def command_deadline(seconds: float | None) -> Iterator[None]:
    """Cancel the run after `seconds` (None or 0: no limit); raise `CommandTimeout` in the
    main thread if it is still running `UNWIND` seconds later."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    message = str(CommandTimeout(seconds))
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
            RUN.expire(seconds)
            signal.setitimer(signal.ITIMER_REAL, UNWIND)
        elif not RUN.main_awaits:  # the run did not stop on its token: its main thread is stuck
            raise CommandTimeout(seconds)

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
