"""Stopping a run on Ctrl-C or SIGTERM: one token, set by the signal, seen wherever work waits.

A container runtime sends SIGTERM and waits a grace period (Kubernetes: 30 s) before SIGKILL;
a person presses Ctrl-C once and expects the prompt back. Either way the run should stop
starting images, cut its transfers short, clean up what they began (a multipart upload is
aborted, a temporary file removed, a registry upload session cancelled: the ordinary failure
paths do that) and still write its report. So the first signal only sets a token:

- the batch loop (`batch/runner.py`) starts no further image and reports the queued ones
  and the cut ones as `interrupted`;
- every place a transfer can wait checks it: the `--limit-rate` limiter and the retry backoff
  sleep on it (`sleep`); stream reads (`CountingReader`, `VerifyingReader`, a registry blob
  body), blob transfers still queued (`Session.once`) and a spec's tag listing check it
  (`check`); both raise `Interrupted`, which unwinds like any other failure;
- the command then writes its report and exits 128 + the signal's number (130, 143).

A second signal exits at once (`os._exit`), after removing the temporary files this process
was writing (`scratch_file`); an open multipart upload stays for `bale gc`, and nothing
half-written is visible either way (the store's write order guarantees that, as for kill -9).

`--command-timeout` ends a run the same way (`pipeline/deadline.py` calls `expire`): images are
`interrupted` with the error `command timed out after N s`, the report is written, and the
exit code is 124 (timeout(1)'s) instead of the signal's.

The token is the process's (`RUN`), as signals are: the limiter, the retry policy and the
readers reach it without every constructor carrying it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from pipeline.errors import BaleError, CommandTimeout, Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CancelToken:
    """Set once, by the first signal or the command's timeout; everything that waits on a
    transfer looks at it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None
        self.timed_out: float | None = None
        """The `--command-timeout` (seconds) that ran out, when that ended the run."""
        self._awaiting = 0

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, signum: int = signal.SIGINT) -> None:
        if not self._event.is_set():
            self.signum = signum
            self._event.set()

    def expire(self, seconds: float) -> None:
        """`--command-timeout` ran out: the run stops as on a signal, saying it timed out."""
        if not self._event.is_set():
            self.timed_out = seconds
            self._event.set()

    def clear(self) -> None:
        self.signum = None
        self.timed_out = None
        self._event.clear()

    @contextlib.contextmanager
    def awaited(self) -> Iterator[None]:
        """The main thread waits here for work that itself stops on this token (the batch
        loop), or writes what the run did: a timeout does not interrupt it, so the report is
        written (`pipeline/deadline.py`)."""
        main = threading.current_thread() is threading.main_thread()
        self._awaiting += int(main)
        try:
            yield
        finally:
            self._awaiting -= int(main)

    @property
    def main_awaits(self) -> bool:
        return self._awaiting > 0

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number; after a
        timeout, timeout(1)'s 124."""
        if self.timed_out is not None:
            return CommandTimeout.exit_code
        return 128 + (self.signum or signal.SIGINT)

    def error(self) -> BaleError:
        """What ended the run, as the error every cut piece of work reports."""
        if self.timed_out is not None:
            return CommandTimeout(self.timed_out)
        return Interrupted(f"interrupted by {self.signal_name}", exit_code=self.exit_code)

    def check(self) -> None:
        """Raise `Interrupted` once the run is cancelled; cheap enough for every read."""
        if self._event.is_set():
            raise self.error()

    def sleep(self, seconds: float) -> None:
        """`time.sleep` that a signal cuts short (with `Interrupted`)."""
        if self._event.wait(seconds) if seconds > 0 else self._event.is_set():
            raise self.error()


RUN = CancelToken()
"""The process's token: the CLI's signal handlers set it."""


def sleep(seconds: float) -> None:
    """The default sleep of the rate limiter and the retry policy: interrupted by a signal."""
    RUN.sleep(seconds)


def check() -> None:
    RUN.check()


_scratch: set[str] = set()
_scratch_lock = threading.Lock()


def scratch_file(path: str | os.PathLike[str]) -> None:
    """Mark a temporary file this process is writing, so that a second signal's immediate
    exit removes it too (the writer's own clean-up does not run then); `scratch_done` when
    the writer has published or removed it."""
    with _scratch_lock:
        _scratch.add(os.fspath(path))


def scratch_done(path: str | os.PathLike[str]) -> None:
    with _scratch_lock:
        _scratch.discard(os.fspath(path))


def _exit_now(signum: int) -> None:
    """The second signal: remove scratch files, say so, and leave without unwinding."""
    with _scratch_lock:
        names = list(_scratch)
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(name)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(name))  # the store's `.bale-tmp/`, when it is now empty
    with contextlib.suppress(Exception):
        sys.stderr.write(f"bale: {signal.Signals(signum).name} again: exiting now\n")
        sys.stderr.flush()
    os._exit(128 + signum)


@contextlib.contextmanager
def on_signals(token: CancelToken = RUN) -> Iterator[CancelToken]:
    """SIGINT and SIGTERM cancel `token` (the first) or exit at once (the second).

    Outside the main thread (where Python delivers signals) this changes nothing. The previous
    handlers come back when the block ends, unless a signal came: the command is then on its
    way out, and a second signal while it writes its report must still exit at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield token
        return
    token.clear()

    def handle(signum: int, _frame: FrameType | None) -> None:
        if token.cancelled:
            _exit_now(signum)
        token.cancel(signum)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield token
    finally:
        if not token.cancelled:
            for s, handler in previous.items():
                signal.signal(s, handler)
