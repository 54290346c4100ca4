from __future__ import annotations

import io
import threading
import time

import pytest

from pipeline.transfer.ratelimit import (
    MIN_BURST,
    LimitedReader,
    RateLimiter,
    limited,
    make_limiter,
)

MiB = 1024 * 1024


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_default_burst() -> None:
    assert RateLimiter(10 * MiB).burst == pytest.approx(MiB)  # 0.1 s worth
    assert RateLimiter(100 * 1024).burst == MIN_BURST  # floor of 64 KiB
    assert RateLimiter(10 * 1024).burst == 10 * 1024  # never more than 1 s of a slow cap
    assert RateLimiter(0.5).burst == 1.0
    assert RateLimiter(MiB, burst=4096).burst == 4096


@pytest.mark.parametrize("rate", [0, -1, float("nan")])
def test_rejects_bad_rate(rate: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate)


def test_first_burst_is_free_then_rate_holds() -> None:
    clock = FakeClock()
    limiter = RateLimiter(MiB, burst=100 * 1024, clock=clock, sleep=clock.sleep)
    start = clock.now
    limiter.acquire(100 * 1024)
    assert clock.sleeps == []
    for _ in range(100):
        limiter.acquire(64 * 1024)
    elapsed = clock.now - start
    assert elapsed == pytest.approx(100 * 64 * 1024 / MiB)


def test_zero_and_negative_are_free() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1000, clock=clock, sleep=clock.sleep)
    limiter.acquire(0)
    limiter.acquire(-5)
    assert clock.sleeps == []


def test_large_request_is_split_into_bursts() -> None:
    clock = FakeClock()
    limiter = RateLimiter(MiB, burst=MiB / 8, clock=clock, sleep=clock.sleep)
    limiter.acquire(2 * MiB)
    # the first eighth is the initial burst, the other 15 wait 1/8 s each
    assert len(clock.sleeps) == 15
    assert all(s == pytest.approx(0.125) for s in clock.sleeps)
    assert sum(clock.sleeps) == pytest.approx(2 - 0.125)


def test_idle_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1_000_000, burst=100_000, clock=clock, sleep=clock.sleep)
    limiter.acquire(100_000)
    clock.now += 3600  # an hour idle earns only one burst
    clock.sleeps.clear()
    limiter.acquire(100_000)
    assert clock.sleeps == []
    limiter.acquire(100_000)
    assert clock.sleeps == [pytest.approx(0.1)]


def test_simultaneous_callers_are_served_in_arrival_order() -> None:
    """Callers arriving together get consecutive slots: the n-th waits n slots, no one starves."""
    clock = FakeClock()
    waits: list[float] = []
    limiter = RateLimiter(MiB, burst=64 * 1024, clock=clock, sleep=waits.append)
    for _ in range(8):  # eight "threads" asking at the same instant; time does not move
        limiter.acquire(64 * 1024)
    slot = 64 * 1024 / MiB
    assert waits == [pytest.approx(slot * i) for i in range(1, 8)]


def test_oversleeping_does_not_lower_the_average() -> None:
    """The schedule comes from the clock, so a late wake-up is made up by the next caller."""
    clock = FakeClock()

    def late_sleep(seconds: float) -> None:
        clock.now += seconds * 1.5

    limiter = RateLimiter(MiB, burst=MiB / 10, clock=clock, sleep=late_sleep)
    start = clock.now
    total = 0
    for _ in range(200):
        limiter.acquire(64 * 1024)
        total += 64 * 1024
    rate = total / (clock.now - start)
    assert rate == pytest.approx(MiB, rel=0.12)


def test_limited_reader_counts_what_it_returns() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1000, burst=100, clock=clock, sleep=clock.sleep)
    reader = LimitedReader(io.BytesIO(b"x" * 1100), limiter)
    assert reader.read(600) == b"x" * 600
    assert reader.read(-1) == b"x" * 500
    assert reader.read(10) == b""
    assert clock.now - 1000.0 == pytest.approx(1.0)  # 1100 bytes - 100 burst at 1000 B/s
    assert reader.readable()


def test_limited_reader_closes_source_and_limited_helper() -> None:
    source = io.BytesIO(b"abc")
    limiter = RateLimiter(MiB)
    reader = limited(source, limiter)
    assert isinstance(reader, LimitedReader)
    reader.close()  # type: ignore[attr-defined]
    assert source.closed
    plain = io.BytesIO(b"abc")
    assert limited(plain, None) is plain
    assert make_limiter(None) is None and make_limiter(0) is None
    made = make_limiter(50 * MiB)
    assert made is not None and made.rate == 50 * MiB
    assert LimitedReader(io.BytesIO(b"abc"), made).read(n=2) == b"ab"  # keyword n works too


def _run_threads(
    limiter: RateLimiter, threads: int, per_thread: int, chunk: int
) -> tuple[float, list[tuple[float, int, int]]]:
    """Each thread drains its own LimitedReader; returns start time and (time, thread, bytes)."""
    events: list[tuple[float, int, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        reader = LimitedReader(io.BytesIO(bytes(per_thread)), limiter)
        barrier.wait()
        while data := reader.read(chunk):
            now = time.monotonic()
            with lock:
                events.append((now, index, len(data)))

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.monotonic()
    for t in pool:
        t.join()
    return start, events


def _bytes_between(events: list[tuple[float, int, int]], a: float, b: float) -> int:
    return sum(n for t, _, n in events if a <= t < b)


def test_real_time_rate_and_fairness_with_8_threads() -> None:
    """8 threads share a 4 MiB/s cap for ~3 s; every 1 s window after the first 0.5 s is
    within ±10%, and each thread gets close to an eighth."""
    rate = 4 * MiB
    limiter = RateLimiter(rate)
    threads, per_thread = 8, 3 * MiB // 2
    start, events = _run_threads(limiter, threads, per_thread, 128 * 1024)
    end = max(t for t, _, _ in events)
    total = threads * per_thread
    overall = (total - limiter.burst) / (end - start)
    assert overall == pytest.approx(rate, rel=0.10)

    window = 1.0
    a = start + 0.5
    checked = 0
    while a + window <= end - 0.1:
        got = _bytes_between(events, a, a + window)
        assert got == pytest.approx(rate * window, rel=0.10), f"window at {a - start:.2f}s"
        per = [sum(n for t, i, n in events if a <= t < a + window and i == k) for k in range(8)]
        assert min(per) >= 0.5 * got / threads, per
        checked += 1
        a += 0.25
    assert checked >= 5


@pytest.mark.slow
def test_real_time_ten_second_windows_with_8_threads() -> None:
    """The acceptance criterion itself: 10-second windows after the first, 8 transfers."""
    rate = 8 * MiB
    limiter = RateLimiter(rate)
    threads, per_thread = 8, 25 * MiB
    start, events = _run_threads(limiter, threads, per_thread, MiB)
    end = max(t for t, _, _ in events)
    a = start + 1.0
    while a + 10 <= end:
        assert _bytes_between(events, a, a + 10) == pytest.approx(rate * 10, rel=0.10)
        a += 0.5
