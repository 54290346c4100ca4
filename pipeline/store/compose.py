"""Server-side compose: an object built from inline bytes and ranges of objects already stored.

The plan is pure (no I/O) so tests and callers can see what will travel before anything does.
Ranges big enough to be parts are copied in place (UploadPartCopy); inline pieces and small
ranges are merged into client-sent parts of at least the provider minimum. When inline bytes
come before a big range (a tar header before a blob), the range's first bytes are fetched by
ranged GET to fill that part and the rest is copied: per large blob, only its header and the
first part travel from the client.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.errors import StoreError
from pipeline.store.base import CopyRange, Inline, Piece, WriteResult
from pipeline.store.multipart import (
    DEFAULT_PARALLEL,
    DEFAULT_PART_SIZE,
    Part,
    PartLimits,
    PartPool,
    PartSink,
    Upload,
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


def build_part(sink: PartSink, part: PlannedPart) -> bytes:
    """The bytes of a client part: inline data and ranges read back from the store."""
    chunks: list[bytes] = []
    for segment in part.segments:
        if isinstance(segment, Inline):
            chunks.append(segment.data)
        else:
            data = sink.read_range(segment.key, segment.start, segment.length)
            if len(data) != segment.length:
                raise StoreError(
                    f"{sink.describe(segment.key)}: range {segment.start}+{segment.length} "
                    f"is past the end of the object"
                )
            chunks.append(data)
    return b"".join(chunks)


def run_compose(
    sink: PartSink,
    key: str,
    plan: ComposePlan,
    *,
    if_absent: bool = False,
    parallel: int = DEFAULT_PARALLEL,
) -> WriteResult:
    """Carry out `plan`: one PUT when it is a single client part, else a multipart upload with
    parts built (or copied) on a bounded pool, aborted on any failure."""
    if plan.single:
        data = build_part(sink, plan.parts[0]) if plan.parts else b""
        written = sink.put_single(key, data, if_absent=if_absent)
        return WriteResult(key=key, size=plan.size, written=written, sent=plan.sent)

    with Upload(sink, key) as upload:
        with PartPool(parallel, "bale-compose") as pool:
            for part in plan.parts:
                pool.submit(_job(sink, key, upload.upload_id, part), hold_slot=False)
            parts = pool.results()
        written = upload.complete(parts, if_absent=if_absent)
    return WriteResult(key=key, size=plan.size, written=written, sent=plan.sent, copied=plan.copied)


def _job(sink: PartSink, key: str, upload_id: str, part: PlannedPart) -> Callable[[], Part]:
    def job() -> Part:
        if part.copy is not None:
            return sink.copy_part(key, upload_id, part.number, part.copy)
        return sink.upload_part(key, upload_id, part.number, build_part(sink, part))

    return job
