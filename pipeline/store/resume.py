"""Reading an object of known size through connections that break: resume with a range GET.

A store's GET body is one HTTP response; a reset or a response that ends early (a proxy or a
load balancer cutting it) used to fail the whole image on a `restore` or `sync` from the bucket,
where the same fault on a registry blob is resumed (registry/client.py). Here the read asks the
store again from the byte reached, so what was received is kept, within the store's retries.
The caller verifies the bytes (a `VerifyingReader` around this), so a resume can never splice
in wrong data unnoticed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipeline.errors import ObjectFrozen, StoreError, StoreNotFound, TransferError
from pipeline.store.base import Readable

log = logging.getLogger("bale.retry")


class ResumingRead:
    """`size` bytes of an object, `open_at(offset)` giving a stream from that offset; a break
    (a store error while reading, or an early end) reopens at the byte reached, up to `retries`
    times in a row without progress."""

    def __init__(
        self, open_at: Callable[[int], Readable], size: int, *, retries: int, what: str
    ) -> None:
        self._open_at = open_at
        self.size = size
        self.retries = retries
        self.what = what
        self.position = 0
        self.resumes = 0
        self._failures = 0
        self._stream: Readable | None = None

    def read(self, n: int = -1, /) -> bytes:
        while True:
            if self.position >= self.size:
                return b""
            if self._stream is None:
                self._stream = self._open_at(self.position)
            want = self.size - self.position if n is None or n < 0 else n
            try:
                data = self._stream.read(want)
            except (StoreNotFound, ObjectFrozen):
                raise
            except StoreError as exc:
                self._broke(str(exc))
                continue
            if data:
                self.position += len(data)
                self._failures = 0
                return data
            self._broke("connection closed early")

    def _broke(self, reason: str) -> None:
        self._failures += 1
        self.close()
        if self._failures > self.retries:
            raise TransferError(
                f"{self.what}: {reason} at byte {self.position} of {self.size}; "
                f"gave up after {self._failures} attempts"
            )
        self.resumes += 1
        log.warning(
            "%s: %s at byte %d of %d; resuming", self.what, reason, self.position, self.size
        )

    def close(self) -> None:
        stream, self._stream = self._stream, None
        close = getattr(stream, "close", None)
        if close is not None:
            close()
