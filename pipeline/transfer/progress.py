"""Progress as events, so operations report bytes without knowing how (or whether) they are shown.

Operations take a `TransferEvents` and call it; the CLI decides whether that becomes a rich
progress bar, JSON log lines or nothing. Same idea as s3transfer's subscribers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from pipeline.readable import Readable
from pipeline.transfer import cancel


@runtime_checkable
class TransferEvents(Protocol):
    """Receives byte counts as they move; `key` names the transfer (a blob digest, a tar key).

    Called from worker threads: implementations must be thread-safe and quick.
    """

    def on_bytes(self, key: str, n: int) -> None: ...


class NullEvents:
    """Reports nowhere."""

    def on_bytes(self, key: str, n: int) -> None:
        pass


class CountingReader:
    """Calls `callback(n)` with the length of every non-empty read.

    Every transfer's bytes pass one of these, so each read is also where a cancelled run
    (Ctrl-C, SIGTERM) stops a stream that no limiter or retry is holding."""

    def __init__(self, source: Readable, callback: Callable[[int], None]) -> None:
        self._source = source
        self._callback = callback
        self.count = 0
        if hasattr(source, "readinto"):
            # Only then: a consumer that fills its own buffer (the registry push does) reaches
            # the source's; one that finds no `readinto` reads as before, with no extra copy.
            self.readinto = self._readinto

    def read(self, n: int = -1) -> bytes:
        cancel.check()
        data = self._source.read(n)
        if data:
            self.count += len(data)
            self._callback(len(data))
        return data

    def _readinto(self, buffer: bytearray | memoryview) -> int:
        cancel.check()
        n: int = self._source.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.count += n
            self._callback(n)
        return n

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()
