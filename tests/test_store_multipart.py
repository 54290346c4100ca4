"""Part sizing, compose planning and the bounded part pool (shared by the S3 and OSS backends)."""

from __future__ import annotations

import io
import math
import random
import threading
import time
from collections.abc import Callable

import pytest

from pipeline.errors import StoreError
from pipeline.store.base import CopyRange, Inline, Piece
from pipeline.store.compose import ComposePlan, plan_compose
from pipeline.store.multipart import (
    DEFAULT_PART_SIZE,
    OSS_LIMITS,
    S3_LIMITS,
    PartLimits,
    choose_part_size,
    part_size_for,
)
from tests.bed.fixtures_store import StoreBed
from tests.bed.oss_server import OssServer

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


# -- part sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (None, DEFAULT_PART_SIZE),
        (0, DEFAULT_PART_SIZE),
        (1 * GiB, 8 * MiB),
        (78 * GiB, 8 * MiB),
        (100 * GiB, 11 * MiB),  # ceil(100 GiB / 10,000) rounded up to a MiB
        (5 * TiB, 525 * MiB),
    ],
)
def test_part_size_keeps_under_10000_parts(size: int | None, expected: int) -> None:
    part = choose_part_size(size, S3_LIMITS)
    assert part == expected
    if size:
        assert math.ceil(size / part) <= 10_000


def test_part_size_respects_provider_minimum() -> None:
    assert choose_part_size(10 * MiB, S3_LIMITS, preferred=1 * MiB) == 5 * MiB
    assert choose_part_size(10 * MiB, OSS_LIMITS, preferred=1 * MiB) == 1 * MiB
    assert choose_part_size(10 * MiB, OSS_LIMITS, preferred=1) == 100 * KiB


def test_part_size_refuses_the_impossible() -> None:
    with pytest.raises(StoreError):
        choose_part_size(50 * TiB, S3_LIMITS)


def test_unknown_size_parts_grow_by_tier() -> None:
    base = 8 * MiB
    sizes = [part_size_for(n, base, S3_LIMITS) for n in (1, 1000, 1001, 2001, 9999, 10_000)]
    assert sizes == [8 * MiB, 8 * MiB, 16 * MiB, 32 * MiB, 4 * GiB, 4 * GiB]
    reach = sum(part_size_for(n, base, S3_LIMITS) for n in range(1, 10_001))
    assert reach > 5 * TiB  # the S3 object size limit fits in 10,000 growing parts


# -- compose planning --------------------------------------------------------------------------


def materialize(plan: ComposePlan, sources: dict[str, bytes]) -> bytes:
    out = bytearray()
    for part in plan.parts:
        if part.copy is not None:
            c = part.copy
            out += sources[c.key][c.start : c.start + c.length]
        else:
            for seg in part.segments:
                if isinstance(seg, Inline):
                    out += seg.data
                else:
                    out += sources[seg.key][seg.start : seg.start + seg.length]
    return bytes(out)


def expected_bytes(pieces: list[Piece], sources: dict[str, bytes]) -> bytes:
    return b"".join(
        p.data if isinstance(p, Inline) else sources[p.key][p.start : p.start + p.length]
        for p in pieces
    )


def check_plan(plan: ComposePlan, limits: PartLimits) -> None:
    assert 0 < len(plan.parts) <= limits.max_parts
    for i, part in enumerate(plan.parts, start=1):
        assert part.number == i
        assert part.size <= limits.max_part
        if i < len(plan.parts):
            assert part.size >= limits.min_part, f"part {i} is {part.size} bytes"
        if part.copy is not None:
            assert part.copy.length >= limits.min_part  # S3 copies ranges only from big sources
    assert plan.sent + plan.copied == plan.size


def test_plan_header_blob_tail_matches_design() -> None:
    """Only the header's part (topped up from the blob) and the tail travel."""
    pieces: list[Piece] = [Inline(b"h" * 512), CopyRange("blob", 0, 12 * MiB), Inline(b"t" * 1024)]
    plan = plan_compose(pieces, S3_LIMITS)
    assert [(p.size, p.copy is not None) for p in plan.parts] == [
        (5 * MiB, False),
        (7 * MiB + 512, True),
        (1024, False),
    ]
    assert plan.parts[1].copy == CopyRange("blob", 5 * MiB - 512, 7 * MiB + 512)
    assert plan.sent == 5 * MiB + 1024
    assert plan.fetched == 5 * MiB - 512


def test_plan_tar_of_many_layers() -> None:
    """A tar: headers between blobs; per big blob one min-size part travels."""
    pieces: list[Piece] = []
    for i in range(20):
        pieces += [Inline(b"h" * 512), CopyRange(f"layer{i}", 0, 50 * MiB + i), Inline(b"\0" * 100)]
    pieces.append(Inline(b"\0" * 1024))
    plan = plan_compose(pieces, OSS_LIMITS)
    check_plan(plan, OSS_LIMITS)
    assert plan.sent <= 20 * 100 * KiB + 1024 + 20 * 100
    assert plan.copied >= 20 * 50 * MiB - 20 * 100 * KiB


def test_plan_small_total_is_one_put() -> None:
    plan = plan_compose([Inline(b"a"), CopyRange("x", 0, 1000), Inline(b"b")], S3_LIMITS)
    assert plan.single and plan.sent == plan.size == 1002


def test_plan_splits_ranges_over_the_part_maximum() -> None:
    limits = PartLimits(min_part=5, max_part=100, max_parts=10_000)
    plan = plan_compose([CopyRange("x", 7, 250)], limits, part_size=10)
    assert [p.copy for p in plan.parts] == [
        CopyRange("x", 7, 84),
        CopyRange("x", 91, 83),
        CopyRange("x", 174, 83),
    ]


def test_plan_grows_thresholds_to_fit_the_part_limit() -> None:
    limits = PartLimits(min_part=10, max_part=10_000, max_parts=20)
    pieces: list[Piece] = [CopyRange("x", i * 20, 20) for i in range(50)]
    plan = plan_compose(pieces, limits, part_size=10)
    check_plan(plan, limits)


@pytest.mark.parametrize("seed", range(40))
def test_plan_invariants_on_random_pieces(seed: int) -> None:
    rng = random.Random(seed)
    limits = PartLimits(min_part=rng.choice([5, 100, 1000]), max_part=5000, max_parts=10_000)
    sources = {f"s{i}": rng.randbytes(rng.randint(1, 20_000)) for i in range(5)}
    pieces: list[Piece] = []
    for _ in range(rng.randint(1, 30)):
        if rng.random() < 0.4:
            pieces.append(Inline(rng.randbytes(rng.choice([0, 1, 10, 300, 2000]))))
        else:
            key = rng.choice(list(sources))
            size = len(sources[key])
            start = rng.randrange(size)
            pieces.append(CopyRange(key, start, rng.randint(0, size - start)))
    plan = plan_compose(pieces, limits, part_size=rng.choice([limits.min_part, 3000]))
    if plan.size:
        check_plan(plan, limits)
    assert materialize(plan, sources) == expected_bytes(pieces, sources)


# -- the part pool -----------------------------------------------------------------------------


@pytest.mark.integration
def test_parts_upload_in_parallel_within_the_bound(
    store_bed: Callable[..., StoreBed], oss_server: OssServer
) -> None:
    """With a slow server, `parallel` parts are in flight at once, and never more."""
    bed = store_bed("oss", part_size=100 * KiB, parallel=3)
    data = random.Random(1).randbytes(2 * MiB)

    def latency(method: str, key: str, query: dict[str, str]) -> float:
        return 0.05 if method == "PUT" and "partNumber" in query else 0.0

    oss_server.state.latency = latency
    oss_server.state.max_active = 0
    try:
        bed.store.put_stream("slow", io.BytesIO(data), len(data))
    finally:
        oss_server.state.latency = None
    # The server counts the part requests it holds at once: the parallelism itself, measured
    # without a clock (a time bound failed on a loaded 2-core machine; speed is the bench's).
    assert oss_server.state.max_active == 3
    assert bed.store.read("slow") == data


def test_reads_happen_before_completion() -> None:
    """Nothing is completed until the source's last read returned (unit check on the order)."""
    from pipeline.store.multipart import Part, stream_upload

    events: list[str] = []
    lock = threading.Lock()

    class Sink:
        limits = PartLimits(min_part=10)

        def describe(self, key: str) -> str:
            return key

        def put_single(self, key: str, data: bytes, *, if_absent: bool) -> bool:
            raise AssertionError("multipart expected")

        def initiate(self, key: str) -> str:
            return "u"

        def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> Part:
            time.sleep(0.01)
            with lock:
                events.append(f"part {number}")
            return Part(number, f"e{number}", len(data))

        def copy_part(self, *a: object) -> Part:
            raise AssertionError

        def complete(self, key: str, upload_id: str, parts: list[Part], *, if_absent: bool) -> bool:
            events.append("complete " + ",".join(str(p.number) for p in parts))
            return True

        def abort(self, key: str, upload_id: str) -> None:
            events.append("abort")

        def read_range(self, key: str, start: int, length: int) -> bytes:
            raise AssertionError

    class Source(io.BytesIO):
        def read(self, n: int | None = -1, /) -> bytes:
            data = super().read(n)
            if self.tell() == len(self.getbuffer()):
                events.append("last read")
            return data

    result = stream_upload(Sink(), "k", Source(b"x" * 95), 95, part_size=10, parallel=3)  # type: ignore[arg-type]
    assert result.size == 95 and result.written
    assert events[-1] == "complete 1,2,3,4,5,6,7,8,9,10"
    assert events.index("last read") < events.index("complete 1,2,3,4,5,6,7,8,9,10")
    assert "abort" not in events


def test_uploads_sharing_slots_keep_parts_in_flight_within_them() -> None:
    """Several uploads of one store share its part slots: in flight across all of them never
    exceeds the slots, so memory does not grow with --jobs (measured in bench case m)."""
    from pipeline.store.multipart import Part, stream_upload

    lock = threading.Lock()
    active = peak = 0

    class Sink:
        limits = PartLimits(min_part=10)

        def describe(self, key: str) -> str:
            return key

        def put_single(self, key: str, data: bytes, *, if_absent: bool) -> bool:
            raise AssertionError("multipart expected")

        def initiate(self, key: str) -> str:
            return key

        def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> Part:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.005)
            with lock:
                active -= 1
            return Part(number, f"e{number}", len(data))

        def copy_part(self, *a: object) -> Part:
            raise AssertionError

        def complete(self, key: str, upload_id: str, parts: list[Part], *, if_absent: bool) -> bool:
            assert [p.number for p in parts] == list(range(1, 21))
            return True

        def abort(self, key: str, upload_id: str) -> None:
            raise AssertionError("no failure expected")

        def read_range(self, key: str, start: int, length: int) -> bytes:
            raise AssertionError

    sink, slots = Sink(), threading.Semaphore(2)
    errors: list[BaseException] = []
    reading = peak_held = 0

    class Source(io.BytesIO):
        """Counts a read after the first as holding a slot (the part it fills is reserved);
        the check that the stream ends there (a read at the end) fills no part and holds none."""

        first = True

        def read(self, n: int | None = -1, /) -> bytes:
            nonlocal reading, peak_held
            if self.first or self.tell() >= len(self.getbuffer()):
                self.first = False
                return super().read(n)
            with lock:
                reading += 1
                peak_held = max(peak_held, reading + active)
            try:
                return super().read(n)
            finally:
                with lock:
                    reading -= 1

    def upload(i: int) -> None:
        try:
            stream_upload(
                sink, f"k{i}", Source(b"x" * 200), 200, part_size=10, parallel=4, slots=slots
            )  # type: ignore[arg-type]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert peak == 2  # 4 uploads x parallel 4 would be 16 without the shared slots
    assert peak_held <= 2, "parts being read count against the shared slots too"
