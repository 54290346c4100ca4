"""The streaming multipart writer S3 and OSS share: bounded memory, parallel parts, all or nothing.

A backend supplies the six primitive calls (`PartSink`); everything about part sizes, reading,
parallelism and clean-up lives here once. The shape of a write:

- the source is read on the calling thread, one part at a time (a verifying source raises on its
  last read, and that must stop the write before it commits);
- each part goes to a bounded pool as soon as it is read; at most `parallel` parts are in flight
  and one more is being read, so memory is (parallel + 1) x part size whatever the object size;
- an object that fits in one part is a single PUT;
- any failure, exception or Ctrl-C aborts the multipart upload, so nothing is ever visible at
  the key and no parts are left billed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pipeline.errors import StoreError
from pipeline.store.base import CopyRange, Readable, WriteResult
from pipeline.store.source import expect_end, read_exactly, read_up_to

log = logging.getLogger("bale.store")

T = TypeVar("T")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DEFAULT_PART_SIZE = 8 * MiB
"""Big enough that a 64 GiB layer still fits in 10,000 parts at this size, small enough that
4 parallel parts plus one being read stay near 40 MiB."""

DEFAULT_PARALLEL = 4

PARTS_PER_TIER = 1000
"""For a stream of unknown size the part size doubles every this many parts, so 10,000 parts
reach about 8 TB while small streams keep small parts."""


@dataclass(frozen=True)
class PartLimits:
    """One provider's multipart rules."""

    min_part: int
    """Smallest part but the last (S3 5 MiB, OSS 100 KB), checked by the server at completion."""
    max_part: int = 4 * GiB
    """Largest part we send or copy (both providers allow 5 GB; stay clear of the edge)."""
    max_parts: int = 10_000


S3_LIMITS = PartLimits(min_part=5 * MiB)
OSS_LIMITS = PartLimits(min_part=100 * KiB)


def choose_part_size(
    size: int | None, limits: PartLimits, preferred: int = DEFAULT_PART_SIZE
) -> int:
    """The part size for an object of `size` bytes: `preferred`, grown so it needs no more than
    `max_parts` parts (rounded up to a whole MiB), never under the provider minimum."""
    part = max(preferred, limits.min_part)
    if size is not None and size > part * limits.max_parts:
        part = math.ceil(size / limits.max_parts / MiB) * MiB
    if part > limits.max_part:
        raise StoreError(f"object of {size} bytes needs parts over {limits.max_part} bytes")
    return part


def part_size_for(number: int, base: int, limits: PartLimits) -> int:
    """Size of part `number` (1-based) of a stream of unknown size: `base`, doubled per tier."""
    tier = (number - 1) // PARTS_PER_TIER
    return min(limits.max_part, base * 2**tier)


@dataclass(frozen=True)
class Part:
    """A finished part, as completion needs it."""

    number: int
    etag: str
    size: int
    crc: int | None = None
    """The provider's CRC64 of the part (OSS), when it reported one."""
    checksum: str | None = None
    """The part's SHA-256, base64, on an upload that declared S3's composite checksum."""


class PartSink(Protocol):
    """The primitive calls of one bucket; each retries transient failures itself and raises
    `StoreError`/`StoreNotFound` for the rest."""

    limits: PartLimits

    def describe(self, key: str) -> str:
        """`s3://bucket/prefix/key` for messages."""
        ...

    def put_single(self, key: str, data: bytes, *, if_absent: bool) -> bool:
        """One PUT; False when `if_absent` found the key taken."""
        ...

    def initiate(self, key: str) -> str: ...

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> Part: ...

    def copy_part(self, key: str, upload_id: str, number: int, source: CopyRange) -> Part: ...

    def complete(self, key: str, upload_id: str, parts: list[Part], *, if_absent: bool) -> bool:
        """Complete the upload; False when `if_absent` found the key taken (the upload is then
        still open and the caller aborts it)."""
        ...

    def abort(self, key: str, upload_id: str) -> None:
        """Abort, and make sure no parts remain (repeating if parts still land)."""
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes: ...


class PartPool(Generic[T]):
    """Runs part jobs on a bounded pool; a failed job stops new submissions.

    Used as a context manager around one multipart upload: on an exception the queued jobs are
    cancelled and the running ones waited for, so `abort` comes after the last part landed.
    """

    def __init__(self, parallel: int, name: str, slots: threading.Semaphore | None = None) -> None:
        self.parallel = max(1, parallel)
        self._pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix=name)
        self._slots = slots if slots is not None else threading.BoundedSemaphore(self.parallel)
        """Held by each job from submission to its end: this upload's own, or `slots` shared
        by every upload to one store so that memory does not grow with concurrent uploads."""
        self._futures: list[Future[T]] = []
        self._failed: Future[T] | None = None
        self._lock = threading.Lock()

    def reserve(self) -> None:
        """Take a slot before reading a part, so the part being read counts against the slots
        too; pass `reserved=True` to the `submit` of that part (or `unreserve` if none)."""
        self.raise_failure()
        self._slots.acquire()

    def unreserve(self) -> None:
        self._slots.release()

    def submit(
        self, job: Callable[[], T], *, hold_slot: bool = True, reserved: bool = False
    ) -> Future[T]:
        """Queue a job. With `hold_slot`, first wait until fewer than `parallel` jobs hold one:
        the caller's memory (the part it just read) is then bounded by the pool size. With
        `reserved`, the slot was taken by `reserve` already and passes to the job."""
        if not reserved:
            self.raise_failure()
        if hold_slot:
            if not reserved:
                self._slots.acquire()
            try:
                self.raise_failure()
                future = self._pool.submit(job)
            except BaseException:
                self._slots.release()
                raise
            future.add_done_callback(self._release)
        else:
            future = self._pool.submit(job)
        future.add_done_callback(self._note_failure)
        self._futures.append(future)
        return future

    def _release(self, _future: Future[T]) -> None:
        self._slots.release()

    def _note_failure(self, future: Future[T]) -> None:
        if not future.cancelled() and future.exception() is not None:
            with self._lock:
                if self._failed is None:
                    self._failed = future

    def raise_failure(self) -> None:
        with self._lock:
            failed = self._failed
        if failed is not None:
            exc = failed.exception()
            assert exc is not None
            raise exc

    def results(self) -> list[T]:
        """Every part, in submission order, once all have finished (first failure raised)."""
        parts = []
        for future in self._futures:
            self.raise_failure()
            parts.append(future.result())
        return parts

    def __enter__(self) -> PartPool[T]:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(cancel=exc is not None)

    def close(self, *, cancel: bool) -> None:
        """Wait for the running jobs; with `cancel` (a failure) drop the queued ones. Running
        jobs always finish: their parts must exist before an abort, or they would land after
        it and linger."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def abort_quietly(sink: PartSink, key: str, upload_id: str) -> None:
    """Abort after a failure without hiding the failure: a failed abort is logged (gc finds
    the upload later); the original error is what the caller must see."""
    try:
        sink.abort(key, upload_id)
    except Exception as exc:
        log.warning("could not abort upload %s of %s: %s", upload_id, sink.describe(key), exc)


class Upload:
    """One multipart upload, all or nothing: initiated on entering the block, aborted if the
    block fails in any way (exception, Ctrl-C) or if completion finds the key taken."""

    def __init__(self, sink: PartSink, key: str) -> None:
        self.sink = sink
        self.key = key
        self.upload_id = ""

    def __enter__(self) -> Upload:
        self.upload_id = self.sink.initiate(self.key)
        return self

    def complete(self, parts: list[Part], *, if_absent: bool) -> bool:
        """Complete with `parts`; False (and aborted) when `if_absent` found the key taken."""
        written = self.sink.complete(self.key, self.upload_id, parts, if_absent=if_absent)
        if not written:
            abort_quietly(self.sink, self.key, self.upload_id)
        return written

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is not None:
            abort_quietly(self.sink, self.key, self.upload_id)


def stream_upload(
    sink: PartSink,
    key: str,
    stream: Readable,
    size: int | None = None,
    *,
    if_absent: bool = False,
    part_size: int = DEFAULT_PART_SIZE,
    parallel: int = DEFAULT_PARALLEL,
    slots: threading.Semaphore | None = None,
) -> WriteResult:
    """Write `stream` to `key` with bounded memory; see the module docstring for the shape.

    `slots`, shared by the uploads of one store, bounds the parts in flight across all of them,
    counting the part each upload is reading (after its first): memory is then about
    (slots + concurrent uploads) x part size at the start and slots x part size after, instead
    of concurrent uploads x (parallel + 1).
    """
    what = sink.describe(key)
    limits = sink.limits
    if size is not None and size < 0:
        raise ValueError(f"negative size {size}")
    base = choose_part_size(size, limits, part_size)

    if size is not None and size <= base:
        whole = read_exactly(stream, size, what=what, offset=0, size=size)
        expect_end(stream, what=what, size=size)
        written = sink.put_single(key, whole, if_absent=if_absent)
        return WriteResult(key=key, size=size, written=written, sent=size)

    if size is not None:
        first = read_exactly(stream, base, what=what, offset=0, size=size)
    else:
        first = read_up_to(stream, base)
        if len(first) < base:
            written = sink.put_single(key, first, if_absent=if_absent)
            return WriteResult(key=key, size=len(first), written=written, sent=len(first))

    total = 0
    with Upload(sink, key) as upload:
        with PartPool[Part](parallel, "bale-part", slots) as pool:
            number = 1
            data: bytes | None = first
            del first
            held = False  # whether a slot was reserved for `data` before it was read
            while data:
                total += len(data)
                pool.submit(_part_job(sink, key, upload.upload_id, number, data), reserved=held)
                data, held = None, False  # the pool holds the part; drop ours before reading
                number += 1
                if size is not None:
                    want = min(base, size - total)
                    if want == 0:
                        expect_end(stream, what=what, size=size)
                        break
                if slots is not None:
                    pool.reserve()
                    held = True
                try:
                    if size is not None:
                        data = read_exactly(stream, want, what=what, offset=total, size=size)
                    else:
                        data = read_up_to(stream, part_size_for(number, base, limits))
                        if number > limits.max_parts and data:
                            raise StoreError(
                                f"{what}: stream needs more than {limits.max_parts} parts"
                            )
                except BaseException:
                    if held:
                        pool.unreserve()
                    raise
                if not data and held:
                    pool.unreserve()
                    held = False
            parts = pool.results()
        written = upload.complete(parts, if_absent=if_absent)
    return WriteResult(key=key, size=total, written=written, sent=total)


def _part_job(
    sink: PartSink, key: str, upload_id: str, number: int, data: bytes
) -> Callable[[], Part]:
    def job() -> Part:
        return sink.upload_part(key, upload_id, number, data)

    return job
