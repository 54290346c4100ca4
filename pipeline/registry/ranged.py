"""Large blobs fetched as several `Range` GETs at once, handed on in order.

On a long link one HTTP stream moves at most its TCP window per round trip, far below what the
link carries; a blob split into ranges fetched in parallel fills it. The ranges are read ahead
within a bounded window and delivered strictly in order, each as one `bytes` of exactly
`chunk` bytes, so the `VerifyingReader` above hashes the blob in order as before, and a store
writer whose part size equals `chunk` turns each range into one part without copying it.

Memory is bounded per client, not per blob: each blob always has one range in flight (as a
single stream would), and every further range read ahead holds a slot of the client's
`RangeBudget`, taken without waiting, so `--jobs` blobs in flight share `streams` extra ranges
instead of multiplying them, and no blob ever waits on another's slots (no deadlock, whatever
order consumers read in). Each range resumes on its own after a dropped connection (a `BlobStream`), and a
registry that ignores `Range` gets the blob read as one stream.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from pipeline.errors import TransferError
from pipeline.oci import Descriptor

log = logging.getLogger("bale.registry")

RANGE_CHUNK = 8 * 1024 * 1024
"""Bytes per range: the stores' default part size, so one range becomes one part."""

DEFAULT_STREAMS = 4

FAST_LINK = 256 * 1024 * 1024
"""Bytes/s of the first range (request latency included) from which one stream is kept: a
link that fast is not the bottleneck (hashing and the store are), and parallel ranges would
only cost memory and CPU. Measured on loopback here: one stream 1 GiB in 3.8 s, four ranges
4.4-5.5 s."""

LONG_LINK = 0.050
"""Seconds to the first range's response head from which a link counts as long. A slow first
range alone is not enough: on a busy two-core machine four loopback blobs starting together
measured 58-336 MiB/s for their first range and 8-33 ms to its head, and parallel ranges there
only cost memory (peak RSS 176-189 MiB against 132 MiB with them off, same time). A path across
a continent or an ocean answers in 70 ms or more; nearer links keep one stream."""


class BlobStream(Protocol):
    """One resuming stream of a blob's bytes from `position` up to `end` (client.BlobBody)."""

    what: str
    position: int
    end: int
    ranged: bool
    """True once the registry answered the stream's Range request with 206."""

    def open(self) -> None: ...
    def read(self, n: int = -1, /) -> bytes: ...
    def readinto(self, buffer: bytearray | memoryview, /) -> int: ...
    def close(self) -> None: ...


class BlobStreams(Protocol):
    """What ranges are fetched through (the registry client passes itself)."""

    def blob_body(
        self,
        repository: str,
        descriptor: Descriptor,
        what: str,
        *,
        start: int = 0,
        end: int | None = None,
    ) -> BlobStream: ...


class RangeBudget:
    """How many ranges a client may hold read ahead at once, across all its blobs."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self._free = self.slots
        self._cond = threading.Condition()

    def acquire(self, *, wait: bool) -> bool:
        with self._cond:
            while not self._free:
                if not wait:
                    return False
                self._cond.wait()
            self._free -= 1
            return True

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify()

    @property
    def free(self) -> int:
        """Slots not held right now."""
        return self._free


class RangedBlobBody:
    """A `Readable` over one blob whose bytes arrive as parallel ranges (see the module)."""

    def __init__(
        self,
        client: BlobStreams,
        repository: str,
        descriptor: Descriptor,
        what: str,
        *,
        streams: int,
        budget: RangeBudget,
        chunk: int = 0,
        fast_link: float | None = -1.0,
        long_link: float = -1.0,
    ) -> None:
        self._client = client
        self._repository = repository
        self.descriptor = descriptor
        self.what = what
        self.streams = max(1, streams)
        self.chunk = chunk or RANGE_CHUNK
        self._budget = budget
        self._pending: collections.deque[tuple[Future[bytes], bool]] = collections.deque()
        """Ranges in flight, in order, each with whether it holds a budget slot."""
        self._next = 0
        """Start of the next range to ask for."""
        self._current = memoryview(b"")
        self._current_bytes = b""
        self._single: BlobStream | None = None
        """The whole blob as one stream, when the registry does not do ranges."""
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self.position = 0
        self.fast_link = FAST_LINK if fast_link is not None and fast_link < 0 else fast_link
        self.long_link = LONG_LINK if long_link < 0 else long_link
        self._first_head = 0.0
        """Seconds the first range took to answer (its response head)."""
        """With a rate here, the first range is fetched alone and timed: at this rate or
        faster the rest comes as one stream; None always fetches in parallel."""
        self._probe_started: float | None = None
        self.parallel: bool | None = None
        """Whether the blob came as parallel ranges (None until decided)."""

    # ---- set-up --------------------------------------------------------------------------

    def open(self) -> None:
        """Ask for the first range here, so a missing blob or a refusal raises at once."""
        size = self.descriptor.size
        if size <= self.chunk:  # one range is the whole blob: nothing to split
            self._single = self._client.blob_body(self._repository, self.descriptor, self.what)
            self._single.open()
            self.parallel = False
            return
        self._probe_started = time.monotonic()
        first = self._client.blob_body(
            self._repository,
            self.descriptor,
            self.what,
            start=0,
            end=min(self.chunk, size),
        )
        first.open()
        self._first_head = time.monotonic() - self._probe_started
        if not first.ranged:
            first.close()
            log.info("%s: registry ignored Range; reading the blob as one stream", self.what)
            self._single = self._client.blob_body(self._repository, self.descriptor, self.what)
            self._single.open()
            self.parallel = False
            return
        self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="bale-range")
        self._pending.append((self._pool.submit(self._drain, first), False))
        self._next = first.end
        if self.fast_link is None:
            self.parallel = True
            self._top_up()

    def _fetch(self, start: int) -> bytes:
        body = self._client.blob_body(
            self._repository,
            self.descriptor,
            self.what,
            start=start,
            end=min(start + self.chunk, self.descriptor.size),
        )
        body.open()
        return self._drain(body)

    @staticmethod
    def _drain(body: BlobStream) -> bytes:
        """All of one range, normally as the single `bytes` urllib3 returns."""
        want = body.end - body.position
        try:
            pieces = []
            while want > 0:
                data = body.read(want)
                if not data:  # BlobBody resumes or raises; an empty read means it is done
                    break
                pieces.append(data)
                want -= len(data)
        finally:
            body.close()
        if want:
            raise TransferError(f"{body.what}: range ended {want} bytes early")
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _top_up(self) -> None:
        """Keep up to `streams` ranges in flight: one of right, the others while slots last."""
        assert self._pool is not None
        size = self.descriptor.size
        while self._next < size and len(self._pending) < self.streams:
            held = any(not h for _, h in self._pending)  # the blob's own range is taken
            if held and not self._budget.acquire(wait=False):
                return
            start, self._next = self._next, min(self._next + self.chunk, size)
            try:
                self._pending.append((self._pool.submit(self._fetch, start), held))
            except BaseException:
                if held:
                    self._budget.release()
                raise

    # ---- reading -------------------------------------------------------------------------

    def read(self, n: int = -1, /) -> bytes:
        if self._closed:
            raise ValueError("read from a closed blob stream")
        if not self._current and self._single is not None:
            data = self._single.read(n)
            self.position += len(data)
            return data
        if not self._current and not self._next_range():
            return b""
        if n is None or n < 0 or n >= len(self._current):
            if len(self._current) == len(self._current_bytes):
                out = self._current_bytes  # a whole range: hand it on without a copy
            else:
                out = bytes(self._current)
            self._current = memoryview(b"")
            self._current_bytes = b""
        else:
            out = bytes(self._current[:n])
            self._current = self._current[n:]
        self.position += len(out)
        return out

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        """`read` into the caller's buffer (a single stream's bytes go straight there)."""
        if self._closed:
            raise ValueError("read from a closed blob stream")
        view = memoryview(buffer).cast("B")
        if not self._current and self._single is not None:
            got = self._single.readinto(view)
            self.position += got
            return got
        if not self._current and not self._next_range():
            return 0
        got = min(len(view), len(self._current))
        view[:got] = self._current[:got]
        self._current = self._current[got:]
        if not self._current:
            self._current_bytes = b""
        self.position += got
        return got

    def _next_range(self) -> bool:
        """Make the next range current (waiting for it); False when none is left."""
        if not self._pending:
            return False
        future, held = self._pending.popleft()
        try:
            data = future.result()
        finally:
            if held:
                self._budget.release()  # the range leaves the read-ahead window
        self._current_bytes = data
        self._current = memoryview(data)
        if self.parallel is None:
            self._decide(len(data))
        elif self.parallel:
            self._top_up()
        return True

    def _decide(self, first: int) -> None:
        """After the first range: parallel ranges for a slow link, one stream for a fast one."""
        assert self._probe_started is not None and self.fast_link is not None
        elapsed = max(time.monotonic() - self._probe_started, 1e-6)
        rate = first / elapsed
        self.parallel = rate < self.fast_link and self._first_head >= self.long_link
        log.debug(
            "%s: first range at %.0f MiB/s, head after %.1f ms: %s",
            self.what,
            rate / 2**20,
            self._first_head * 1000,
            f"{self.streams} parallel ranges" if self.parallel else "one stream",
        )
        if self.parallel:
            self._top_up()
        elif self._next < self.descriptor.size:
            self._single = self._client.blob_body(
                self._repository, self.descriptor, self.what, start=self._next
            )
            self._single.open()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._single is not None:
            self._single.close()
        pending, self._pending = self._pending, collections.deque()
        for future, held in pending:
            if not held:
                future.cancel()
            elif future.cancel():
                self._budget.release()
            else:
                future.add_done_callback(lambda _f: self._budget.release())
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._current = memoryview(b"")
        self._current_bytes = b""
