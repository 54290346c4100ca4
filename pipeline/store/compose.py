"""Server-side compose: an object built from inline bytes and ranges of objects already stored.

The plan is pure (no I/O) so tests and callers can see what will travel before anything does.
Ranges big enough to be parts are copied in place (UploadPartCopy); inline pieces and small
ranges are merged into client-sent parts of at least the provider minimum. When inline bytes
come before a big range (a tar header before a blob), the range's first bytes are fetched by
ranged GET to fill that part and the rest is copied: per large blob, only its header and the
first part travel from the client.

`StreamingComposition` carries a plan out while its sources are still being written: each part
goes as soon as the sources it needs are stored, and the bytes a client part needs of a source
are kept as that source streams past (`Capture`), so they are never read back.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.errors import StoreError
from pipeline.store.base import CopyRange, Inline, ObjectStore, Piece, Readable, WriteResult
from pipeline.store.multipart import (
    DEFAULT_PARALLEL,
    DEFAULT_PART_SIZE,
    Part,
    PartLimits,
    PartPool,
    PartSink,
    Upload,
    abort_quietly,
)


@dataclass(frozen=True)
class PlannedPart:
    """One part of a composed object: a server-side copy, or bytes the client sends."""

    number: int
    size: int
    copy: CopyRange | None = None
    segments: tuple[Piece, ...] = ()
    """For a client part: inline bytes, and ranges fetched by ranged GET, in order."""

    @property
    def sent(self) -> int:
        return 0 if self.copy is not None else self.size


@dataclass(frozen=True)
class ComposePlan:
    parts: tuple[PlannedPart, ...]
    size: int

    @property
    def sent(self) -> int:
        """Bytes that go up from the client (inline bytes and fetched ranges)."""
        return sum(p.sent for p in self.parts)

    @property
    def fetched(self) -> int:
        """Bytes of stored ranges the client reads (ranged GET) to build its parts."""
        return sum(s.size for p in self.parts for s in p.segments if isinstance(s, CopyRange))

    @property
    def copied(self) -> int:
        """Bytes the store copies in place."""
        return self.size - self.sent

    @property
    def single(self) -> bool:
        """True when one PUT does it: a single client part (small objects, or no copies)."""
        return len(self.parts) <= 1 and all(p.copy is None for p in self.parts)


def plan_compose(
    pieces: Sequence[Piece], limits: PartLimits, part_size: int = DEFAULT_PART_SIZE
) -> ComposePlan:
    """Plan parts for `pieces` under `limits`, growing thresholds if 10,000 parts are not enough."""
    for piece in pieces:
        if isinstance(piece, CopyRange) and (piece.start < 0 or piece.length < 0):
            raise ValueError(f"bad range {piece}")
    target = max(part_size, limits.min_part)
    copy_min = limits.min_part
    while True:
        parts = _plan(pieces, limits, target, copy_min)
        if len(parts) <= limits.max_parts:
            size = sum(p.size for p in parts)
            return ComposePlan(parts=tuple(parts), size=size)
        if copy_min >= limits.max_part and target >= limits.max_part:
            raise StoreError(f"compose needs {len(parts)} parts, over {limits.max_parts}")
        target = min(limits.max_part, target * 2)
        copy_min = min(limits.max_part, copy_min * 2)


def _plan(
    pieces: Sequence[Piece], limits: PartLimits, target: int, copy_min: int
) -> list[PlannedPart]:
    parts: list[PlannedPart] = []
    pending: list[Piece] = []
    pending_size = 0

    def flush() -> None:
        nonlocal pending, pending_size
        if pending:
            parts.append(
                PlannedPart(number=len(parts) + 1, size=pending_size, segments=tuple(pending))
            )
            pending, pending_size = [], 0

    def add(segment: Piece) -> None:
        nonlocal pending_size
        pending.append(segment)
        pending_size += segment.size
        if pending_size >= target:
            flush()

    def copy(source: CopyRange) -> None:
        count = math.ceil(source.length / limits.max_part)
        base, extra = divmod(source.length, count)
        start = source.start
        for i in range(count):
            length = base + (1 if i < extra else 0)
            chunk = CopyRange(source.key, start, length)
            parts.append(PlannedPart(number=len(parts) + 1, size=length, copy=chunk))
            start += length

    for piece in pieces:
        if piece.size == 0:
            continue
        if isinstance(piece, Inline) or piece.length < copy_min:
            add(piece)
            continue
        source = piece
        if 0 < pending_size < limits.min_part:
            # Fold the range's first bytes into the part the inline bytes started.
            need = limits.min_part - pending_size
            add(CopyRange(source.key, source.start, need))
            flush()
            source = CopyRange(source.key, source.start + need, source.length - need)
            if source.length < copy_min:
                add(source)
                continue
        flush()
        copy(source)

    # A small trailing range is fetched rather than copied even though a last part may be any
    # size: S3 copies a range only out of a source over 5 MB, which a small range may not be.
    flush()
    return parts


Held = dict[CopyRange, list[bytes | memoryview]]
"""Bytes of source ranges captured as they streamed in, as the chunks the source handed out."""


def _share(data: bytes, start: int, end: int) -> bytes | memoryview:
    """`data[start:end]` without a copy when `data` is immutable (a view keeps it alive)."""
    if type(data) is not bytes:
        return bytes(data[start:end])  # a buffer its owner may reuse: copy
    if start == 0 and end == len(data):
        return data
    return memoryview(data)[start:end]


def build_part(sink: PartSink, part: PlannedPart, held: Held | None = None) -> bytes:
    """The bytes of a client part: inline data, and ranges from `held` (captured as their
    source streamed in) or read back from the store. One copy: the join."""
    chunks: list[bytes | memoryview] = []
    for segment in part.segments:
        if isinstance(segment, Inline):
            chunks.append(segment.data)
            continue
        captured = held.pop(segment, None) if held is not None else None
        if captured is not None:
            chunks.extend(captured)
            continue
        data = sink.read_range(segment.key, segment.start, segment.length)
        if len(data) != segment.length:
            raise StoreError(
                f"{sink.describe(segment.key)}: range {segment.start}+{segment.length} "
                f"is past the end of the object"
            )
        chunks.append(data)
    return b"".join(chunks)


CAPTURE_BUDGET = 4 * DEFAULT_PART_SIZE
"""Most bytes of sources a composition keeps in memory for parts not yet sent (a part's worth
per parallel blob); past it a source is not captured and its bytes are read back from the store
when its part is built."""


class Capture:
    """A source stream passed through: keeps the bytes of the ranges a composition's client
    parts need (a blob's first bytes after its tar header, or a small blob whole).

    It keeps the chunks the source returned, not copies: a chunk wholly inside a range is the
    very object the store's write holds too (a small blob's single PUT body), so capturing
    costs memory only for as long as the part waits, not twice over."""

    def __init__(
        self, stream: Readable, owner: StreamingComposition, ranges: Sequence[CopyRange]
    ) -> None:
        self._stream = stream
        self.owner = owner
        self.chunks: Held = {r: [] for r in ranges}
        self._lengths = dict.fromkeys(ranges, 0)
        self.reserved = sum(r.length for r in ranges)
        self._end = max(r.start + r.length for r in ranges)
        self._position = 0
        self.taken = False

    def read(self, n: int = -1, /) -> bytes:
        data = self._stream.read(n)
        if data and self._position < self._end:
            first, last = self._position, self._position + len(data)
            for r, kept in self.chunks.items():
                lo, hi = max(first, r.start), min(last, r.start + r.length)
                if lo < hi:
                    kept.append(_share(data, lo - first, hi - first))
                    self._lengths[r] += hi - lo
        self._position += len(data)
        return data

    def complete(self) -> Held:
        """The ranges captured in full (a write that read its source to the end has them all)."""
        return {r: c for r, c in self.chunks.items() if self._lengths[r] == r.length}

    def close(self) -> None:
        self.owner.release(self)
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class StreamingComposition:
    """A `Composition` on a multipart upload (S3, OSS): see the module docstring.

    Parts run on a bounded pool as their sources are reported stored; the upload is started by
    the first part and aborted if the composition is left without `finish`. The object is
    visible only once `finish` completes the upload.
    """

    def __init__(
        self,
        sink: PartSink,
        key: str,
        plan: ComposePlan,
        *,
        if_absent: bool = False,
        parallel: int = DEFAULT_PARALLEL,
        budget: int = CAPTURE_BUDGET,
        slots: threading.Semaphore | None = None,
    ) -> None:
        self.sink = sink
        self.key = key
        self.plan = plan
        self.if_absent = if_absent
        self.parallel = parallel
        self.budget = budget
        self._slots = slots
        """Shared with the store's other uploads (see `stream_upload`): the tar's parts and the
        blobs' parts in flight together stay within the store's bound, memory too."""
        self._lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self._stored: set[str] = set()
        self._held: Held = {}
        self._reserved = 0
        self._waiting: dict[int, PlannedPart] = {p.number: p for p in plan.parts}
        self._needs: dict[str, list[CopyRange]] = {}
        for part in plan.parts:
            if part.copy is None:
                for segment in part.segments:
                    if isinstance(segment, CopyRange):
                        self._needs.setdefault(segment.key, []).append(segment)
        self._pool: PartPool | None = None
        self._upload: Upload | None = None
        self._closed = False
        self._completed = False

    # -- Composition -----------------------------------------------------------------------

    def capture(self, key: str, stream: Readable) -> Readable:
        ranges = self._needs.get(key)
        if not ranges:
            return stream
        need = sum(r.length for r in ranges)
        with self._lock:
            if self._closed or key in self._stored or self._reserved + need > self.budget:
                return stream
            self._reserved += need
        return Capture(stream, self, ranges)

    def stored(self, key: str, capture: Readable | None = None) -> None:
        ready: list[PlannedPart] = []
        with self._lock:
            kept = 0
            if not self._closed and key not in self._stored:
                self._stored.add(key)
                if isinstance(capture, Capture) and capture.owner is self and not capture.taken:
                    held = capture.complete()
                    self._held.update(held)
                    kept = sum(r.length for r in held)
                if not self.plan.single:
                    ready = self._take_ready()
            if isinstance(capture, Capture) and capture.owner is self:
                self._release_locked(capture, kept)
        for part in ready:
            self._submit(part)

    def release(self, capture: Capture) -> None:
        """A capture ends without being reported stored (its write failed): drop its bytes."""
        with self._lock:
            self._release_locked(capture, 0)

    def _release_locked(self, capture: Capture, kept: int) -> None:
        """Give back a capture's reservation but for the `kept` bytes now held for parts."""
        if not capture.taken:
            capture.taken = True
            self._reserved -= capture.reserved - kept

    def _take_held(self, part: PlannedPart) -> Held:
        with self._lock:
            held = {s: self._held.pop(s) for s in part.segments if s in self._held}
            self._reserved -= sum(r.length for r in held)
        return held

    def finish(self) -> WriteResult:
        plan = self.plan
        with self._lock:
            self._stored.update(s.key for p in plan.parts for s in self._sources(p))
            ready = [] if plan.single else self._take_ready()
        if plan.single:
            data = (
                build_part(self.sink, plan.parts[0], self._take_held(plan.parts[0]))
                if plan.parts
                else b""
            )
            written = self.sink.put_single(self.key, data, if_absent=self.if_absent)
            return WriteResult(key=self.key, size=plan.size, written=written, sent=plan.sent)
        for part in ready:
            self._submit(part)
        pool = self._start_pool()
        parts = sorted(pool.results(), key=lambda p: p.number)
        assert self._upload is not None
        written = self._upload.complete(parts, if_absent=self.if_absent)
        self._completed = True
        return WriteResult(
            key=self.key, size=plan.size, written=written, sent=plan.sent, copied=plan.copied
        )

    def __enter__(self) -> StreamingComposition:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        with self._lock:
            self._closed = True
            pool = self._pool
        if pool is not None:
            pool.close(cancel=not self._completed)
        # After the pool: a part that was running may have started the upload.
        upload = self._upload
        if upload is not None and not self._completed:
            abort_quietly(self.sink, self.key, upload.upload_id)

    # -- parts -----------------------------------------------------------------------------

    @staticmethod
    def _sources(part: PlannedPart) -> list[CopyRange]:
        if part.copy is not None:
            return [part.copy]
        return [s for s in part.segments if isinstance(s, CopyRange)]

    def _take_ready(self) -> list[PlannedPart]:
        """Parts whose sources are all stored, removed from the waiting list (lock held)."""
        ready = [
            part
            for part in self._waiting.values()
            if all(s.key in self._stored for s in self._sources(part))
        ]
        for part in ready:
            del self._waiting[part.number]
        return ready

    def _start_pool(self) -> PartPool:
        with self._lock:
            if self._pool is None:
                self._pool = PartPool(self.parallel, "bale-compose", self._slots)
            return self._pool

    def _upload_id(self) -> str:
        with self._upload_lock:  # not `_lock`: reporting a source must not wait on a request
            if self._upload is None:
                upload = Upload(self.sink, self.key)
                upload.upload_id = self.sink.initiate(self.key)
                self._upload = upload
            return self._upload.upload_id

    def _submit(self, part: PlannedPart) -> None:
        pool = self._start_pool()
        try:
            pool.submit(self._job(part))
        except Exception:  # the pool's first failure is raised by `finish`
            return

    def _job(self, part: PlannedPart) -> Callable[[], Part]:
        def job() -> Part:
            upload_id = self._upload_id()
            if part.copy is not None:
                return self.sink.copy_part(self.key, upload_id, part.number, part.copy)
            data = build_part(self.sink, part, self._take_held(part))
            return self.sink.upload_part(self.key, upload_id, part.number, data)

        return job


class DeferredComposition:
    """A `Composition` that composes only at `finish`: for stores whose compose is cheap
    locally (files copied in the kernel), where nothing is gained by starting early."""

    def __init__(
        self, store: ObjectStore, key: str, pieces: Sequence[Piece], *, if_absent: bool = False
    ) -> None:
        self.store = store
        self.key = key
        self.pieces = list(pieces)
        self.if_absent = if_absent

    def capture(self, key: str, stream: Readable) -> Readable:
        return stream

    def stored(self, key: str, capture: Readable | None = None) -> None:
        pass

    def finish(self) -> WriteResult:
        return self.store.compose(self.key, self.pieces, if_absent=self.if_absent)

    def __enter__(self) -> DeferredComposition:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        pass
