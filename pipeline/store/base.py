"""The one object-store interface every backend implements (local files, S3, OSS).

Keys are relative to the store's prefix and always use `/`. Backends differ in how they meet
the contract, never in the contract: one test suite (tests/test_store_contract.py) runs
unchanged against all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Readable(Protocol):
    """Anything with `read(n)`: a file, an HTTP body, a verifying reader."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None
    etag: str | None = None


@dataclass(frozen=True)
class Inline:
    """Bytes the client sends as part of a composed object (tar headers, small files)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class CopyRange:
    """`length` bytes of the existing object `key` from `start`, copied server-side if possible."""

    key: str
    start: int
    length: int

    @property
    def size(self) -> int:
        return self.length


Piece = Inline | CopyRange


@dataclass(frozen=True)
class WriteResult:
    """What a write did: `written` is False when `if_absent` found the key already there."""

    key: str
    size: int
    written: bool
    sent: int
    """Bytes sent from the client to the store."""
    copied: int = 0
    """Bytes the store copied in place (server-side compose)."""


@dataclass(frozen=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: datetime | None


class ObjectStore(Protocol):
    """A flat key space of immutable objects.

    Writes are all-or-nothing: nothing is visible at a key until the write completes, and a
    write that fails (exception, Ctrl-C, a stream that raises) leaves no object and no open
    multipart upload behind. With `if_absent=True` an existing key is left untouched and the
    result says `written=False`; for content-addressed keys that counts as success.
    """

    url: str
    """The store's URL for display (never contains secrets)."""

    def head(self, key: str) -> ObjectInfo | None: ...

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Read a whole small object, or a byte range of any object. Raises StoreNotFound."""
        ...

    def open(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        """A streaming reader over an object (or a range of it), for large objects."""
        ...

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> WriteResult: ...

    def put_stream(
        self, key: str, stream: Readable, size: int | None = None, *, if_absent: bool = False
    ) -> WriteResult:
        """Stream an object of known or unknown size with bounded memory.

        If `stream.read` raises, the write is abandoned and the error propagates.
        """
        ...

    def compose(self, key: str, pieces: Sequence[Piece], *, if_absent: bool = False) -> WriteResult:
        """Write the concatenation of `pieces`, copying ranges in place where the store can."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def list_uploads(self, prefix: str = "") -> Iterator[MultipartUpload]:
        """Multipart uploads still open under `prefix` (for gc)."""
        ...

    def abort_upload(self, upload: MultipartUpload) -> None: ...
