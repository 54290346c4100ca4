"""Large streams into a local file through aligned buffers and a writer thread (O_DIRECT where
the filesystem has it): exact bytes, the same failures as the plain path, nothing left over."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import threading
from pathlib import Path

import pytest

from pipeline.errors import DigestMismatch, StoreError, TransferError
from pipeline.store import direct
from pipeline.store.local import TMP_DIR, LocalStore
from pipeline.transfer.digest_stream import VerifyingReader

MiB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest() * 2048  # 64 KiB
    out = bytearray()
    n = 0
    while len(out) < size:
        out += hashlib.sha256(n.to_bytes(8, "big") + block[:32]).digest() + block[32:4096]
        n += 1
    return bytes(out[:size])


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Into(io.BytesIO):
    """A stream with `readinto` filling at most `step` bytes per call (a socket's pieces)."""

    def __init__(self, data: bytes, step: int = 300_001) -> None:
        super().__init__(data)
        self.step = step
        self.readintos = 0

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        self.readintos += 1
        return super().readinto(memoryview(buffer)[: self.step])


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bale-write"]


def leftovers(root: Path) -> list[str]:
    tmp = root / TMP_DIR
    return sorted(os.listdir(tmp)) if tmp.exists() else []


@pytest.mark.parametrize(
    "size",
    [direct.MIN_SIZE, direct.MIN_SIZE + 1, 12 * MiB + 4096, 20 * MiB + 513],
    ids=["exact-blocks", "one-byte-tail", "aligned-tail", "odd-tail"],
)
def test_large_streams_are_written_exactly(tmp_path: Path, size: int) -> None:
    data = payload(size)
    store = LocalStore(tmp_path)
    stream = Into(data)
    result = store.put_stream("a/b.tar", stream, size)
    assert stream.readintos > 0, "the direct path read with readinto"
    assert result.size == size and result.written
    assert (tmp_path / "a" / "b.tar").read_bytes() == data
    assert leftovers(tmp_path) == [] and writer_threads() == []


def _recording_flags(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Patch the writer's `os.write` to note, per write, whether O_DIRECT was on."""
    real_write = os.write
    seen: list[bool] = []

    def write(fd: int, data: memoryview) -> int:
        seen.append(bool(direct._O_DIRECT and fcntl.fcntl(fd, fcntl.F_GETFL) & direct._O_DIRECT))
        return real_write(fd, data)

    monkeypatch.setattr(direct.os, "write", write)
    return seen


def test_direct_io_is_used_on_local_disk_filesystems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "probe", "xb") as f:
        kind = direct.filesystem_of(f.fileno())
    assert kind, "the mount table names the filesystem of a temporary directory"
    if kind not in direct.DIRECT_FILESYSTEMS:
        pytest.skip(f"{kind} is not a direct-I/O filesystem")
    seen = _recording_flags(monkeypatch)
    data = payload(direct.MIN_SIZE + 700)
    LocalStore(tmp_path).put_stream("x", Into(data), len(data))
    assert (tmp_path / "x").read_bytes() == data
    assert seen[:-1] == [True] * (len(seen) - 1), "whole blocks go direct"
    assert seen[-1] is False, "the unaligned tail through the page cache"


def test_other_filesystems_keep_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "filesystem_of", lambda fd: "nfs4")
    seen = _recording_flags(monkeypatch)
    data = payload(direct.MIN_SIZE + 4096)
    LocalStore(tmp_path).put_stream("x", Into(data), len(data))
    assert (tmp_path / "x").read_bytes() == data
    assert seen and not any(seen)


def test_filesystem_without_direct_io_writes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "_set_direct", lambda fd, on: False)
    data = payload(9 * MiB + 17)
    LocalStore(tmp_path).put_stream("x", Into(data), len(data))
    assert (tmp_path / "x").read_bytes() == data


def test_direct_write_refused_midway_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that wants another alignment answers EINVAL: the rest goes buffered."""
    real_write = os.write
    refused = []

    def write(fd: int, data: memoryview) -> int:
        if not refused and fcntl.fcntl(fd, fcntl.F_GETFL) & direct._O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct.os, "write", write)
    data = payload(10 * MiB + 3)
    LocalStore(tmp_path).put_stream("x", Into(data), len(data))
    assert (tmp_path / "x").read_bytes() == data


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(direct.os, "write", lambda fd, data: real_write(fd, data[:300_000]))
    data = payload(9 * MiB + 1)
    LocalStore(tmp_path).put_stream("x", Into(data), len(data))
    assert (tmp_path / "x").read_bytes() == data


def test_digest_mismatch_publishes_nothing(tmp_path: Path) -> None:
    data = payload(16 * MiB)
    bad = bytearray(data)
    bad[-1] ^= 0xFF
    store = LocalStore(tmp_path)
    reader = VerifyingReader(io.BytesIO(bytes(bad)), digest_of(data), len(data), what="blob x")
    with pytest.raises(DigestMismatch, match="blob x"):
        store.put_stream("k.tar", reader, len(data))
    assert store.head("k.tar") is None
    assert leftovers(tmp_path) == [] and writer_threads() == []


def test_stream_ending_early_or_running_long(tmp_path: Path) -> None:
    data = payload(9 * MiB)
    store = LocalStore(tmp_path)
    with pytest.raises(TransferError, match=f"ended at {len(data)} of {len(data) + 5} bytes"):
        store.put_stream("short", Into(data), len(data) + 5)
    with pytest.raises(TransferError, match="longer than its declared"):
        store.put_stream("long", Into(data + b"extra"), len(data))
    assert store.head("short") is None and store.head("long") is None
    assert leftovers(tmp_path) == [] and writer_threads() == []


def test_disk_full_is_a_store_error_and_stops_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls = []

    def write(fd: int, data: memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(direct.os, "write", write)
    data = payload(64 * MiB)
    stream = Into(data, step=MiB)
    with pytest.raises(StoreError, match="no space left on device"):
        LocalStore(tmp_path).put_stream("full", stream, len(data))
    assert stream.tell() < len(data), "reading stopped once the disk said no"
    assert leftovers(tmp_path) == [] and writer_threads() == []


def test_small_or_unsized_streams_take_the_plain_path(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    small = Into(payload(direct.MIN_SIZE - 1))
    store.put_stream("small", small, direct.MIN_SIZE - 1)
    unsized = Into(payload(direct.MIN_SIZE + 1))
    store.put_stream("unsized", unsized)
    assert small.readintos == unsized.readintos == 0
    assert store.read("small") == payload(direct.MIN_SIZE - 1)
    assert store.read("unsized") == payload(direct.MIN_SIZE + 1)
