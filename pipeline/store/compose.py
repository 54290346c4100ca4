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
from concurrent.futures import Future, wait
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
    parts need (a blob's first bytes after its tar header, or a small blob whole), and hands
    them over the moment they are all read, so their part can go up while the rest of the
    source still streams.

    It keeps the chunks the source returned, not copies: they are the very objects the store's
    write of the source holds too, so capturing costs no memory of its own."""

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
        self.offered = False
        """Its bytes were handed to the composition (all ranges read; not yet verified)."""
        self.settled = False
        """Its source was reported stored, or it was given up: nothing more to account."""

    def read(self, n: int = -1, /) -> bytes:
        data = self._stream.read(n)
        first = self._position
        self._position += len(data)
        if data and first < self._end:
            for r, kept in self.chunks.items():
                lo, hi = max(first, r.start), min(self._position, r.start + r.length)
                if lo < hi:
                    kept.append(_share(data, lo - first, hi - first))
                    self._lengths[r] += hi - lo
            if self._position >= self._end:  # the read that completes every range
                self.owner.offer(self)
        return data

    def take(self) -> Held:
        """The ranges captured in full, handed over: the capture keeps no reference, so the
        chunks live only as long as the part that needs them."""
        held = {r: c for r, c in self.chunks.items() if self._lengths[r] == r.length}
        self.chunks = {}
        return held

    def close(self) -> None:
        self.owner.release(self)
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def _share(data: bytes, start: int, end: int) -> bytes | memoryview:
    """`data[start:end]` without a copy when `data` is immutable (the view keeps it alive, but
    only until the capture is offered and its part built, moments later)."""
    if type(data) is not bytes:
        return bytes(data[start:end])  # a buffer its owner may reuse
    if start == 0 and end == len(data):
        return data
    return memoryview(data)[start:end]


class StreamingComposition:
    """A `Composition` on a multipart upload (S3, OSS): see the module docstring.

    A part runs on a bounded pool once each of its ranges is either captured or stored: copy
    parts after their source is stored, client parts as soon as their bytes are captured. Those
    bytes are not verified yet (the source's digest is checked on its last byte), so a part
    built from a capture whose source then fails is built again, from the next attempt's bytes
    or the stored object, before `finish` completes the upload; the upload is started by the
    first part and aborted if the composition is left without `finish`. The object is visible
    only once `finish` completes it.
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
    ) -> None:
        self.sink = sink
        self.key = key
        self.plan = plan
        self.if_absent = if_absent
        self.parallel = parallel
        self.budget = budget
        self._lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self._stored: set[str] = set()
        self._held: Held = {}
        self._provider: dict[CopyRange, Capture] = {}
        self._used: dict[int, set[int]] = {}
        """Part number → ids of the captures whose bytes it was built from."""
        self._sent: dict[int, Future[Part | None]] = {}
        self._reserved = 0
        self._waiting: dict[int, PlannedPart] = {p.number: p for p in plan.parts}
        self._needs: dict[str, list[CopyRange]] = {}
        for part in plan.parts:
            if part.copy is None:
                for segment in part.segments:
                    if isinstance(segment, CopyRange):
                        self._needs.setdefault(segment.key, []).append(segment)
        self._pools: dict[bool, PartPool[Part | None]] = {}
        """By whether the part is a copy: client parts hold bytes, so they must not wait behind
        slow server-side copies."""
        self._upload: Upload | None = None
        self._closed = False
        self._completed = False

    # -- Composition -----------------------------------------------------------------------

    def capture(self, key: str, stream: Readable) -> Readable:
        ranges = self._needs.get(key)
        if not ranges or self.plan.single:
            return stream
        need = sum(r.length for r in ranges)
        with self._lock:
            if self._closed or key in self._stored or self._reserved + need > self.budget:
                return stream
            self._reserved += need
        return Capture(stream, self, ranges)

    def offer(self, capture: Capture) -> None:
        """All of a capture's ranges are read: parts that need only them (and stored or
        captured sources) can go now."""
        with self._lock:
            if self._closed or capture.settled or capture.offered:
                return
            capture.offered = True
            held = capture.take()
            for r, chunks in held.items():
                self._held[r] = chunks
                self._provider[r] = capture
            ready = self._take_ready()
        self._submit_all(ready)

    def stored(self, key: str, capture: Readable | None = None) -> None:
        ready: list[PlannedPart] = []
        with self._lock:
            if isinstance(capture, Capture) and capture.owner is self:
                self._settle(capture, failed=False)
            if not self._closed and key not in self._stored:
                self._stored.add(key)
                ready = self._take_ready()
        self._submit_all(ready)

    def release(self, capture: Capture) -> None:
        """A capture ends (its stream closed): if its source was never reported stored, the
        write failed and its bytes, used or not, must not reach the object."""
        with self._lock:
            self._settle(capture, failed=True)

    def _settle(self, capture: Capture, *, failed: bool) -> None:
        """Account for a capture once (lock held); on failure, take its bytes back."""
        if capture.settled:
            return
        capture.settled = True
        if not capture.offered:
            self._reserved -= capture.reserved
            return
        if not failed:
            return
        for r in [r for r, c in self._provider.items() if c is capture]:
            del self._provider[r]
            if self._held.pop(r, None) is not None:
                self._reserved -= r.length
        for number, users in self._used.items():
            if id(capture) in users and number not in self._waiting:
                self._waiting[number] = self._part(number)  # built again, from good bytes

    def finish(self) -> WriteResult:
        plan = self.plan
        with self._lock:
            self._stored.update(s.key for p in plan.parts for s in self._sources(p))
            ready = self._take_ready()
        if plan.single:
            data = build_part(self.sink, plan.parts[0]) if plan.parts else b""
            written = self.sink.put_single(self.key, data, if_absent=self.if_absent)
            return WriteResult(key=self.key, size=plan.size, written=written, sent=plan.sent)
        self._submit_all(ready)
        latest: dict[int, Part] = {}
        for pool in list(self._pools.values()):
            for part in pool.results():  # a part built again comes later: it wins
                if part is not None:
                    latest[part.number] = part
        if sorted(latest) != [p.number for p in plan.parts] or self._upload is None:
            raise StoreError(f"{self.sink.describe(self.key)}: compose lost track of a part")
        written = self._upload.complete(
            [latest[n] for n in sorted(latest)], if_absent=self.if_absent
        )
        self._completed = True
        return WriteResult(
            key=self.key, size=plan.size, written=written, sent=plan.sent, copied=plan.copied
        )

    def __enter__(self) -> StreamingComposition:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
            self._held.clear()
        for pool in pools:
            pool.close(cancel=not self._completed)
        # After the pool: a part that was running may have started the upload.
        upload = self._upload
        if upload is not None and not self._completed:
            abort_quietly(self.sink, self.key, upload.upload_id)

    # -- parts -----------------------------------------------------------------------------

    def _part(self, number: int) -> PlannedPart:
        return self.plan.parts[number - 1]

    @staticmethod
    def _sources(part: PlannedPart) -> list[CopyRange]:
        if part.copy is not None:
            return [part.copy]
        return [s for s in part.segments if isinstance(s, CopyRange)]

    def _buildable(self, part: PlannedPart) -> bool:
        """A copy part once its source is stored; a client part once each range it holds is
        stored (read back) or captured (lock held)."""
        if part.copy is not None:
            return part.copy.key in self._stored
        return all(s.key in self._stored or s in self._held for s in self._sources(part))

    def _take_ready(self) -> list[PlannedPart]:
        """Waiting parts whose every range is stored or captured, taken off the list (lock
        held). A single-request object waits for `finish`."""
        if self.plan.single:
            return []
        ready = [part for part in self._waiting.values() if self._buildable(part)]
        for part in ready:
            del self._waiting[part.number]
        return ready

    def _take_held(self, part: PlannedPart) -> Held | None:
        """The captured bytes `part` is built from, or None (and the part back on the waiting
        list) when a capture it counted on was taken back before it ran."""
        with self._lock:
            if not self._buildable(part):
                self._waiting[part.number] = part
                return None
            held = {s: self._held.pop(s) for s in part.segments if s in self._held}
            self._used[part.number] = {id(self._provider[s]) for s in held}
            self._reserved -= sum(r.length for r in held)
        return held

    def _start_pool(self, copies: bool) -> PartPool[Part | None]:
        with self._lock:
            pool = self._pools.get(copies)
            if pool is None:
                name = "bale-compose-copy" if copies else "bale-compose"
                pool = self._pools[copies] = PartPool(self.parallel, name)
            return pool

    def _upload_id(self) -> str:
        with self._upload_lock:  # not `_lock`: reporting a source must not wait on a request
            if self._upload is None:
                upload = Upload(self.sink, self.key)
                upload.upload_id = self.sink.initiate(self.key)
                self._upload = upload
            return self._upload.upload_id

    def _submit_all(self, parts: list[PlannedPart]) -> None:
        """Queue parts without waiting for a slot: the caller may be a source's reading thread
        holding a store slot itself; memory is bounded by the capture budget instead."""
        for part in parts:
            pool = self._start_pool(part.copy is not None)
            earlier = self._sent.get(part.number)
            try:
                self._sent[part.number] = pool.submit(self._job(part, earlier), hold_slot=False)
            except Exception:  # the pool's first failure is raised by `finish`
                return

    def _job(
        self, part: PlannedPart, earlier: Future[Part | None] | None
    ) -> Callable[[], Part | None]:
        def job() -> Part | None:
            if earlier is not None:  # the same part from bad bytes must land first, then this
                wait([earlier])
            if part.copy is not None:
                upload_id = self._upload_id()
                return self.sink.copy_part(self.key, upload_id, part.number, part.copy)
            held = self._take_held(part)
            if held is None:
                return None  # waiting again; a later source report submits it anew
            upload_id = self._upload_id()
            data = build_part(self.sink, part, held)
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
