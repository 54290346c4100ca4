"""Reading a caller's stream for a store write: whole parts, on the calling thread, to its size.

Every backend reads its source here so that they agree on what a stream of the wrong length
means. The source is often a `VerifyingReader` that raises `DigestMismatch` on the read that
reaches its size; reads therefore stay sequential and on the caller's thread, and a write only
commits after the last byte has been read (and so verified).
"""

from __future__ import annotations

from pipeline.errors import TransferError
from pipeline.store.base import Readable

READ_CHUNK = 1024 * 1024
"""Largest single `read` asked of a source when filling a part, so a source that returns
exactly what it is asked for (a file, urllib3, a VerifyingReader) fills a small part in one go
and a big one without a giant intermediate buffer."""


def read_up_to(stream: Readable, n: int) -> bytes:
    """Up to `n` bytes, fewer only at end of stream.

    A source that returns whole requests (the common case) costs one `read` and no copy.
    """
    if n <= 0:
        return b""
    first = stream.read(n)
    if len(first) > n:
        raise TransferError(f"source returned {len(first)} bytes when asked for {n}")
    if not first or len(first) == n:
        return bytes(first)
    buffer = bytearray(first)
    while len(buffer) < n:
        want = min(n - len(buffer), READ_CHUNK)
        chunk = stream.read(want)
        if not chunk:
            break
        if len(chunk) > want:
            raise TransferError(f"source returned {len(chunk)} bytes when asked for {want}")
        buffer += chunk
    return bytes(buffer)


def read_exactly(stream: Readable, n: int, *, what: str, offset: int, size: int) -> bytes:
    """`n` bytes at `offset` of a stream declared to be `size` bytes, or `TransferError`."""
    data = read_up_to(stream, n)
    if len(data) < n:
        raise TransferError(f"{what}: stream ended at {offset + len(data)} of {size} bytes")
    return data


def expect_end(stream: Readable, *, what: str, size: int) -> None:
    """Check that a stream of declared `size` has nothing more to give.

    Called after the last declared byte, before the write commits: a longer stream means the
    declared size was wrong, and storing a truncated object would be silent corruption.
    """
    extra = stream.read(1)
    if extra:
        raise TransferError(f"{what}: stream is longer than its declared {size} bytes")
