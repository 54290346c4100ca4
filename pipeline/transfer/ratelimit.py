"""One bandwidth cap (`--limit-rate`) shared by every transfer thread of the process.

A token bucket that may go into debt: each caller reserves its bytes under a lock and then
sleeps, outside the lock, until the bucket would have refilled to cover them. Reservations are
handed out in arrival order, so concurrent threads share the rate roughly equally, and the
schedule is absolute (computed from the clock, not from how long a sleep really took), so
oversleeping never accumulates into a lower average. The burst is kept small (0.1 s of rate)
so that any window of a few seconds sees the cap within a few percent. The sleep is the run's
cancellable one: Ctrl-C or SIGTERM ends it at once (`transfer/cancel.py`), even at 1 MiB/s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pipeline.readable import Readable
from pipeline.transfer import cancel

MIN_BURST = 64 * 1024
"""Smallest default burst, so fast links are not throttled one tiny slice at a time."""

BURST_SECONDS = 0.1
"""Default burst as seconds' worth of the rate."""


class RateLimiter:
    """A thread-safe token bucket of `rate` bytes/s holding at most `burst` bytes."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = cancel.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        if burst is None:
            # 0.1 s of rate, at least 64 KiB, but never more than one second's worth, so a
            # slow cap (say 10K) is not one multi-second burst followed by silence.
            burst = max(rate * BURST_SECONDS, min(float(MIN_BURST), rate), 1.0)
        if not burst > 0:
            raise ValueError(f"burst must be positive, not {burst!r}")
        self._rate = float(rate)
        self._burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self._burst
        self._last = clock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def acquire(self, n: int) -> None:
        """Block until `n` more bytes fit under the cap.

        Requests larger than the burst are taken one burst at a time, so one thread asking
        for 64 MiB does not hold a reservation that starves the others.
        """
        remaining = int(n)
        while remaining > 0:
            piece = min(remaining, int(self._burst)) or remaining
            remaining -= piece
            wait = self._reserve(piece)
            if wait > 0:
                self._sleep(wait)

    def _reserve(self, n: int) -> float:
        """Take `n` tokens now (possibly into debt); return how long to wait for them."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last)
            self._last = now
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._tokens -= n
            return -self._tokens / self._rate if self._tokens < 0 else 0.0


class LimitedReader:
    """A reader whose bytes count against a shared `RateLimiter`.

    Tokens are taken after each read, for the bytes actually returned: the data is already
    here, but the caller cannot have it (and so the next read cannot start) before its turn.
    """

    def __init__(self, source: Readable, limiter: RateLimiter) -> None:
        self._source = source
        self._limiter = limiter

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        if data:
            self._limiter.acquire(len(data))
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


def make_limiter(rate: float | None) -> RateLimiter | None:
    """The process-wide limiter for `--limit-rate`: None (no cap) for an absent or zero rate."""
    return RateLimiter(rate) if rate else None


def limited(source: Readable, limiter: RateLimiter | None) -> Readable:
    """`source` behind `limiter`, or `source` itself when there is no cap."""
    return source if limiter is None else LimitedReader(source, limiter)
