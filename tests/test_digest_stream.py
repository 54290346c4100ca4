from __future__ import annotations

import gc
import hashlib
import http.server
import io
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3

from pipeline.errors import DigestMismatch, ManifestError, TransferError
from pipeline.transfer import digest_stream
from pipeline.transfer.digest_stream import BackgroundHasher, VerifyingReader, sha256_stream

MiB = 1024 * 1024


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def payload(size: int) -> bytes:
    """Deterministic, non-repeating bytes (a repeated pattern could hide an offset bug)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bale-hash")]


# --- BackgroundHasher ---


def test_hasher_matches_hashlib_across_chunk_sizes() -> None:
    data = payload(3 * MiB + 12345)
    hasher = BackgroundHasher()
    sizes = [10, 100, 70_000, 1, MiB, 5, MiB, 3]
    offset = 0
    for size in sizes:
        hasher.update(data[offset : offset + size])
        offset += size
    hasher.update(data[offset:])
    hasher.update(b"")
    assert hasher.digest() == digest_of(data)
    assert hasher.digest() == digest_of(data)  # idempotent
    with pytest.raises(ValueError):
        hasher.update(b"more")


def test_hasher_sha512_and_empty() -> None:
    assert BackgroundHasher("sha512").digest() == digest_of(b"", "sha512")
    h = BackgroundHasher("sha512")
    h.update(payload(MiB))
    assert h.digest() == digest_of(payload(MiB), "sha512")


def test_hasher_copies_mutable_chunks() -> None:
    buf = bytearray(payload(MiB))
    hasher = BackgroundHasher()
    hasher.update(buf)
    buf[:] = bytes(len(buf))  # the caller reuses its buffer at once
    assert hasher.digest() == digest_of(payload(MiB))


def test_small_chunks_need_no_thread_and_threads_end() -> None:
    before = len(hash_threads())
    small = BackgroundHasher()
    small.update(b"{}")
    assert small._thread is None
    assert small.digest() == digest_of(b"{}")
    big = BackgroundHasher()
    big.update(payload(MiB))
    assert len(hash_threads()) == before + 1
    big.digest()
    assert len(hash_threads()) == before


def test_hasher_close_and_context_manager() -> None:
    before = len(hash_threads())
    with BackgroundHasher() as hasher:
        hasher.update(payload(MiB))
    hasher.close()  # twice is fine
    with pytest.raises(ValueError):
        hasher.digest()
    assert len(hash_threads()) == before


def test_abandoned_hasher_thread_exits() -> None:
    before = len(hash_threads())
    hasher = BackgroundHasher()
    hasher.update(payload(MiB))
    del hasher
    gc.collect()
    deadline = time.monotonic() + 2
    while len(hash_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(hash_threads()) == before


class GatedHash:
    """A hash object whose update waits for a gate, or fails, to test the worker's edges."""

    def __init__(self, gate: threading.Event | None = None, fail_at: int | None = None) -> None:
        self.gate = gate
        self.fail_at = fail_at
        self.updates = 0

    def update(self, data: bytes) -> None:
        self.updates += 1
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail_at is not None and self.updates >= self.fail_at:
            raise RuntimeError("hash exploded")

    def hexdigest(self) -> str:
        return "00"


def test_hasher_backpressure(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    monkeypatch.setattr(digest_stream.hashlib, "new", lambda name: GatedHash(gate))
    hasher = BackgroundHasher(max_pending=2)
    chunk = bytes(digest_stream.INLINE_MAX)  # big enough to go to the worker
    done = threading.Event()
    fed = [0]

    def feed() -> None:
        for _ in range(6):
            hasher.update(chunk)
            fed[0] += 1
        done.set()

    threading.Thread(target=feed, daemon=True).start()
    time.sleep(0.2)
    # one chunk in the (blocked) worker, two queued, the fourth update is blocked
    assert fed[0] == 3 and not done.is_set()
    gate.set()
    assert done.wait(5)
    assert hasher.digest() == "sha256:00"


def test_worker_error_surfaces_without_deadlock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest_stream.hashlib, "new", lambda name: GatedHash(fail_at=2))
    hasher = BackgroundHasher(max_pending=1)
    chunk = bytes(digest_stream.INLINE_MAX)
    with pytest.raises(TransferError, match="hash exploded") as info:
        for _ in range(50):  # far more than max_pending: producers must not block forever
            hasher.update(chunk)
        hasher.digest()
    assert isinstance(info.value.__cause__, RuntimeError)
    hasher.close()


# --- VerifyingReader ---


class ChunkySource:
    """A source that returns at most `step` bytes per read, like a socket."""

    def __init__(self, data: bytes, step: int = 1000) -> None:
        self.data = data
        self.pos = 0
        self.step = step
        self.closed = False

    def read(self, n: int = -1, /) -> bytes:
        n = len(self.data) if n < 0 else n
        out = self.data[self.pos : self.pos + min(n, self.step)]
        self.pos += len(out)
        return out

    def close(self) -> None:
        self.closed = True


def drain(reader: VerifyingReader, n: int) -> tuple[bytes, BaseException | None]:
    got = bytearray()
    try:
        while chunk := reader.read(n):
            got += chunk
    except Exception as exc:
        return bytes(got), exc
    return bytes(got), None


@pytest.mark.parametrize("n", [1, 999, 4096, MiB, -1])
def test_reader_returns_exactly_the_blob(n: int) -> None:
    data = payload(100_007 if 0 < n < 4096 else 2 * MiB + 7)
    reader = VerifyingReader(io.BytesIO(data), digest_of(data), len(data), what="blob x")
    got, error = drain(reader, n)
    assert error is None
    assert got == data
    assert reader.verified and reader.bytes_read == len(data)
    assert reader.read(10) == b""


def test_reader_fills_reads_from_a_chunky_source() -> None:
    data = payload(100_000)
    reader = VerifyingReader(ChunkySource(data, 777), digest_of(data), len(data), what="blob")
    assert len(reader.read(10_000)) == 10_000
    assert len(reader.read(50_000)) == 50_000
    assert len(reader.read(50_000)) == 40_000
    assert reader.verified


def test_mismatch_withholds_the_final_chunk() -> None:
    data = payload(3 * MiB)
    wrong = digest_of(b"something else")
    reader = VerifyingReader(io.BytesIO(data), wrong, len(data), what="blob sha256:abc of r:1")
    got, error = drain(reader, MiB)
    assert isinstance(error, DigestMismatch)
    assert got == data[: 2 * MiB]  # the last MiB was never handed out
    message = str(error)
    assert message == f"blob sha256:abc of r:1: expected {wrong}, got {digest_of(data)}"
    with pytest.raises(DigestMismatch):  # sticky: never a clean EOF afterwards
        reader.read(MiB)
    assert not reader.verified


def test_mismatch_in_a_single_read_returns_nothing() -> None:
    data = payload(1000)
    reader = VerifyingReader(io.BytesIO(data), digest_of(b"x"), len(data), what="config")
    with pytest.raises(DigestMismatch):
        reader.read()


def test_same_length_corruption_is_caught() -> None:
    data = payload(MiB)
    corrupt = bytearray(data)
    corrupt[MiB // 2] ^= 1
    reader = VerifyingReader(io.BytesIO(bytes(corrupt)), digest_of(data), MiB, what="layer")
    _, error = drain(reader, 64 * 1024)
    assert isinstance(error, DigestMismatch)


def test_copyfileobj_consumer_aborts_on_mismatch() -> None:
    data = payload(MiB + 1)
    reader = VerifyingReader(io.BytesIO(data), digest_of(b""), len(data), what="blob")
    sink = io.BytesIO()
    with pytest.raises(DigestMismatch):
        shutil.copyfileobj(reader, sink, 64 * 1024)
    assert sink.tell() < len(data)


def test_extra_source_bytes_are_ignored() -> None:
    data = payload(5000)
    source = io.BytesIO(data + b"trailing junk")
    reader = VerifyingReader(source, digest_of(data), len(data), what="blob")
    assert reader.read() == data
    assert reader.verified

    class Greedy:
        def read(self, n: int = -1, /) -> bytes:
            return data + b"junk"  # ignores n

    reader = VerifyingReader(Greedy(), digest_of(data), len(data), what="blob")
    assert reader.read(10_000) == data


def test_early_end_is_a_transfer_error() -> None:
    data = payload(500)
    reader = VerifyingReader(io.BytesIO(data), digest_of(data), 1000, what="blob sha256:ab")
    got, error = drain(reader, 300)
    assert got == data[:300]
    assert isinstance(error, TransferError)
    assert str(error) == "blob sha256:ab: stream ended at 500 of 1000 bytes"
    with pytest.raises(TransferError):
        reader.read(1)


def test_source_errors_propagate_and_stick() -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int = -1, /) -> bytes:
            self.calls += 1
            if self.calls == 3:
                raise ConnectionResetError(104, "reset")
            return b"a" * 100

    source = Broken()
    reader = VerifyingReader(source, digest_of(b"a" * 1000), 1000, what="blob")
    assert reader.read(100) == b"a" * 100
    with pytest.raises(ConnectionResetError):
        reader.read(300)  # got 100 more, then the reset: those 100 are lost to the caller
    with pytest.raises(ConnectionResetError):  # so the reader never continues
        reader.read(300)
    assert source.calls == 3


def test_resuming_source_underneath_is_transparent() -> None:
    """Reconnecting is the source's job: a resuming reader that reopens at its offset."""
    data = payload(300_000)

    class Resuming:
        def __init__(self) -> None:
            self.offset = 0
            self.body = io.BytesIO(data)
            self.reconnects = 0

        def read(self, n: int = -1, /) -> bytes:
            if self.offset >= 100_000 and self.reconnects == 0:
                self.reconnects += 1  # the connection dropped; reopen with Range
                self.body = io.BytesIO(data[self.offset :])
            out = self.body.read(min(n, 64 * 1024))
            self.offset += len(out)
            return out

    source = Resuming()
    reader = VerifyingReader(source, digest_of(data), len(data), what="blob")
    got, error = drain(reader, MiB)
    assert error is None and got == data and source.reconnects == 1


def test_size_zero_verifies_on_first_read() -> None:
    ok = VerifyingReader(io.BytesIO(b""), digest_of(b""), 0, what="empty")
    assert ok.read(10) == b""
    assert ok.verified
    bad = VerifyingReader(io.BytesIO(b""), digest_of(b"x"), 0, what="empty")
    with pytest.raises(DigestMismatch, match=r"^empty: expected"):
        bad.read(0)


def test_read_zero_reads_nothing() -> None:
    source = ChunkySource(b"abc")
    reader = VerifyingReader(source, digest_of(b"abc"), 3, what="blob")
    assert reader.read(0) == b""
    assert source.pos == 0
    assert reader.read(n=2) == b"ab"  # keyword works as well as positional
    assert reader.read(3) == b"c"


def test_bad_arguments() -> None:
    with pytest.raises(ManifestError):
        VerifyingReader(io.BytesIO(), "md5:abc", 0, what="blob")
    with pytest.raises(ValueError):
        VerifyingReader(io.BytesIO(), digest_of(b""), -1, what="blob")


def test_close_closes_source_and_hasher() -> None:
    before = len(hash_threads())
    data = payload(MiB)
    source = ChunkySource(data, MiB)
    with VerifyingReader(source, digest_of(data), 2 * MiB, what="blob") as reader:
        reader.read(MiB)
    assert source.closed
    assert len(hash_threads()) == before
    assert reader.readable()


def test_sha512_digest() -> None:
    data = payload(200_000)
    reader = VerifyingReader(io.BytesIO(data), digest_of(data, "sha512"), len(data), what="b")
    assert reader.read() == data and reader.verified


def test_sha256_stream() -> None:
    data = payload(5 * MiB + 3)
    assert sha256_stream(io.BytesIO(data)) == (digest_of(data), len(data))
    assert sha256_stream(ChunkySource(data, 4096), chunk=100_000) == (digest_of(data), len(data))
    assert sha256_stream(io.BytesIO(b"")) == (digest_of(b""), 0)


# --- over a real HTTP body ---


@pytest.fixture
def blob_server() -> Iterator[tuple[str, bytes]]:
    data = payload(3 * MiB + 5)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/blob", data
    finally:
        server.shutdown()
        server.server_close()


def test_verifies_a_urllib3_body(blob_server: tuple[str, bytes]) -> None:
    url, data = blob_server
    pool = urllib3.PoolManager()
    response = pool.request("GET", url, preload_content=False)
    with VerifyingReader(response, digest_of(data), len(data), what="blob") as reader:
        got, error = drain(reader, MiB)
    assert error is None and got == data

    response = pool.request("GET", url, preload_content=False)
    reader = VerifyingReader(response, digest_of(b"nope"), len(data), what="blob")
    got, error = drain(reader, MiB)
    assert isinstance(error, DigestMismatch) and len(got) == 3 * MiB
    reader.close()
