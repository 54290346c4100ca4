"""`VerifyingReader.readinto`: the caller's buffer filled and hashed before the call returns."""

from __future__ import annotations

import hashlib
import io

import pytest

from pipeline.errors import DigestMismatch, TransferError
from pipeline.transfer.digest_stream import BackgroundHasher, VerifyingReader

MiB = 1024 * 1024


def payload(size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ReadOnly:
    """A source with `read` only, handing out at most `step` bytes per call."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def read(self, n: int = -1, /) -> bytes:
        return self._data.read(self._step if n < 0 else min(n, self._step))


class ShortInto(io.BytesIO):
    """A source whose `readinto` fills at most `step` bytes per call."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self._step = step

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        view = memoryview(buffer)
        return super().readinto(view[: self._step])


@pytest.mark.parametrize(
    "make",
    [
        lambda d: io.BytesIO(d),
        lambda d: ShortInto(d, 70_001),
        lambda d: ReadOnly(d, 100_000),
    ],
    ids=["readinto", "short-readinto", "read-only"],
)
@pytest.mark.parametrize("buffer", [4096, MiB, 3 * MiB + 7])
def test_readinto_fills_whole_buffers_and_verifies(make, buffer: int) -> None:  # type: ignore[no-untyped-def]
    data = payload(5 * MiB + 123)
    reader = VerifyingReader(make(data), digest_of(data), len(data), what="blob")
    buf = bytearray(buffer)
    out = bytearray()
    sizes = []
    while n := reader.readinto(buf):
        sizes.append(n)
        out += buf[:n]
        buf[:] = bytes(buffer)
    assert bytes(out) == data and reader.verified
    assert all(n == buffer for n in sizes[:-1]), "only the last fill may be short"
    assert reader.readinto(buf) == 0 and reader.read(10) == b""


def test_readinto_into_a_memoryview_slice() -> None:
    data = payload(MiB)
    reader = VerifyingReader(io.BytesIO(data), digest_of(data), len(data), what="blob")
    buf = bytearray(2 * MiB)
    assert reader.readinto(memoryview(buf)[100 : 100 + MiB]) == MiB
    assert bytes(buf[100 : 100 + MiB]) == data and reader.verified


def test_readinto_mismatch_raises_on_the_last_fill_and_sticks() -> None:
    data = payload(3 * MiB)
    bad = bytearray(data)
    bad[2 * MiB + 5] ^= 1
    reader = VerifyingReader(io.BytesIO(bytes(bad)), digest_of(data), len(data), what="blob")
    buf = bytearray(MiB)
    assert reader.readinto(buf) == MiB
    assert reader.readinto(buf) == MiB
    with pytest.raises(DigestMismatch, match="blob: expected"):
        reader.readinto(buf)
    with pytest.raises(DigestMismatch):
        reader.readinto(buf)
    with pytest.raises(DigestMismatch):
        reader.read(1)
    assert not reader.verified


def test_readinto_source_ending_early_is_a_transfer_error() -> None:
    data = payload(MiB)
    reader = VerifyingReader(io.BytesIO(data[:-10]), digest_of(data), len(data), what="blob")
    with pytest.raises(TransferError, match=f"stream ended at {MiB - 10} of {MiB} bytes"):
        reader.readinto(bytearray(2 * MiB))


def test_read_and_readinto_mixed_keep_the_hash_in_order() -> None:
    """Big reads start the hash thread; a `readinto` after them queues behind them."""
    data = payload(6 * MiB + 5)
    reader = VerifyingReader(io.BytesIO(data), digest_of(data), len(data), what="blob")
    out = bytearray(reader.read(2 * MiB))
    assert reader._hasher._thread is not None
    buf = bytearray(MiB)
    n = reader.readinto(buf)
    out += buf[:n]
    buf[:] = bytes(MiB)  # reused at once: the queued copy is what gets hashed
    out += reader.read(MiB)
    while n := reader.readinto(buf):
        out += buf[:n]
    assert bytes(out) == data and reader.verified


def test_update_now_hashes_on_the_callers_thread() -> None:
    hasher = BackgroundHasher()
    buf = bytearray(payload(2 * MiB))
    hasher.update_now(memoryview(buf))
    assert hasher._thread is None
    buf[:] = bytes(len(buf))
    assert hasher.digest() == digest_of(payload(2 * MiB))
    with pytest.raises(ValueError):
        hasher.update_now(b"more")


def test_readinto_leaves_no_export_of_the_buffer() -> None:
    data = payload(3 * MiB)
    reader = VerifyingReader(io.BytesIO(data), digest_of(data), len(data), what="blob")
    buf = bytearray(2 * MiB)
    assert reader.readinto(buf) == 2 * MiB
    buf.extend(b"x")  # a BufferError if anything still held a view of it
    del buf[-1]
    assert reader.readinto(buf) == MiB and reader.verified
