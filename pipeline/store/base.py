"""The one object-store interface every backend implements (local files, S3, OSS).

Keys are relative to the store's prefix and always use `/`. Backends differ in how they meet
the contract, never in the contract: one test suite (tests/test_store_contract.py) runs
unchanged against all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable
from urllib.parse import quote

from pipeline.readable import Readable as Readable  # where streams are defined
from pipeline.store.classes import RestoreState, Thaw
from pipeline.store.encryption import Encryption
from pipeline.store.protection import Lock, Protection, Retention


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None
    etag: str | None = None
    storage_class: str | None = None
    """The object's class as the provider spells it (`STANDARD`, `Archive`); None where the
    store has no classes (local files)."""
    archived: bool = False
    """In an archive class (S3 GLACIER/DEEP_ARCHIVE, OSS Archive and colder): reads need a
    restore first."""
    restore: RestoreState | None = None
    """The object's restore, from `head` (listings do not say): None when none was asked."""
    retention: Retention | None = None
    """From `head`: the object's Object Lock retention or legal hold (S3), or the bucket's WORM
    period from its last write (OSS, once `protection()` was asked); None: none known."""
    encryption: str | None = None
    """From `head`: how the provider says the object is encrypted at rest (`AES256`,
    `aws:kms`, `KMS`, `SSE-C`); None where it says nothing."""

    @property
    def frozen(self) -> bool:
        """Reads fail (ObjectFrozen) until a restore completes."""
        return self.archived and (self.restore is None or self.restore.ongoing)

    def held(self, now: datetime) -> Retention | None:
        """The retention that makes the bucket refuse a delete at `now`; None: deletable."""
        return self.retention if self.retention is not None and self.retention.active(now) else None


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


class Composition(Protocol):
    """A compose started before its sources are all stored (see `ObjectStore.start_compose`).

    The caller streams each source object through `capture` while writing it, then says
    `stored(key, capture)` once that write succeeded: parts that copy from the source can go at
    once, and client parts get their bytes from the capture instead of reading them back from
    the store. So the composed object is mostly built while its sources still arrive, and
    nothing is visible at its key until `finish`. Leaving the `with` block without `finish`
    (an error, Ctrl-C) abandons it and leaves nothing behind.
    """

    def capture(self, key: str, stream: Readable) -> Readable:
        """`stream` (the bytes being written to `key`), keeping what the compose needs of it."""
        ...

    def stored(self, key: str, capture: Readable | None = None) -> None:
        """The object at `key` is now complete and verified; `capture`, when given, is what
        `capture` returned for that write. Never raises: failures surface at `finish`."""
        ...

    def finish(self) -> WriteResult:
        """Complete the object once every source is stored (those never reported are taken
        to be there now)."""
        ...

    def __enter__(self) -> Composition: ...

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...


class ObjectStore(Protocol):
    """A flat key space of immutable objects.

    Writes are all-or-nothing: nothing is visible at a key until the write completes, and a
    write that fails (exception, Ctrl-C, a stream that raises) leaves no object and no open
    multipart upload behind. With `if_absent=True` an existing key is left untouched and the
    result says `written=False`; for content-addressed keys that counts as success.

    Storage classes are a write option of the store, not of each call: `with_storage_class`
    gives the same store (same client, same connections) writing every new object — put,
    put_stream, compose, start_compose — in that class; one view per kind of object (blobs,
    tars, small files) keeps the classes apart. A class the store does not have is refused
    there, before anything is written. Objects in an archive class raise ObjectFrozen, naming
    the key, on every read (and as a compose's copy source) until `restore` made them readable.
    """

    url: str
    """The store's URL for display (never contains secrets)."""

    def describe(self, key: str) -> str:
        """`key` in full, for messages and reports: `s3://bucket/prefix/key`, a file's path."""
        ...

    def check(self, *, write: bool = False) -> None:
        """Raise StoreUnusable when the store cannot be used at all, with one cheap request
        (with `write`, one more that proves we may write, leaving nothing behind).

        Called once before a command's first image: a missing bucket or refused credentials
        are one line and exit 2, not the same failure for every image of a run.
        """
        ...

    storage_class: str | None
    """The class new objects are written in; None: the bucket's default (S3 STANDARD, OSS
    the bucket's class)."""

    def with_storage_class(self, storage_class: str | None) -> ObjectStore:
        """This store writing new objects in `storage_class` (None: the default). Raises
        UnknownStorageClass (exit 2) for a class the store does not have; see classes.py."""
        ...

    encryption: Encryption
    """What every write asks of the provider (and for SSE-C every read too); `describe()` is
    what a record says of it. `NONE` for a local directory."""

    def protection(self) -> Protection:
        """The bucket's write-once configuration (S3 Object Lock, OSS WORM), asked once and
        kept; `UNPROTECTED` for a local directory or a bucket without one."""
        ...

    def with_lock(self, lock: Lock) -> ObjectStore:
        """This store writing every new object with `lock` (retention, legal hold), as
        `with_storage_class` does for classes. UsageError (exit 2) where objects cannot carry
        their own retention (OSS: the bucket's WORM policy decides; a local directory)."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """Size, date, class and restore state of the object at `key`, None when there is
        none."""
        ...

    def restore(self, key: str, *, days: int = 1, tier: str = "Standard") -> Thaw:
        """Make an archived object readable for `days` (S3 and OSS RestoreObject, at `tier`:
        Expedited, Standard or Bulk). Idempotent: a restore already running or done is not
        asked again. NOT_NEEDED for an object readable as it is (not archived, or a server
        that keeps the class name and serves reads, as Ceph RGW 16), IN_PROGRESS while the
        provider works (minutes to hours; 48 h for OSS DeepColdArchive), READY once readable.
        Raises StoreNotFound for no object, UnknownStorageClass for an unknown tier."""
        ...

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Read a whole small object, or a byte range of any object. Raises StoreNotFound,
        or ObjectFrozen for an archived object not restored.

        Ranges follow HTTP: a range running past the end returns what is there; one starting
        past the end (of a non-empty object) raises StoreError.
        """
        ...

    def open(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        """A streaming reader over an object (or a range of it), for large objects."""
        ...

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> WriteResult:
        """Write a small object in one request."""
        ...

    def put_stream(
        self, key: str, stream: Readable, size: int | None = None, *, if_absent: bool = False
    ) -> WriteResult:
        """Stream an object of known or unknown size with bounded memory.

        The stream is read sequentially on the calling thread and the write commits only after
        its last byte was read: if `stream.read` raises (a verifying reader's DigestMismatch on
        its final read), the write is abandoned and the error propagates. With `size`, a stream
        that ends early or runs longer is a TransferError.
        """
        ...

    def compose(self, key: str, pieces: Sequence[Piece], *, if_absent: bool = False) -> WriteResult:
        """Write the concatenation of `pieces`, copying ranges in place where the store can.

        `CopyRange` keys are in this store. The result's `sent` counts bytes that went up from
        the client (inline pieces, and range bytes fetched to fill parts), `copied` bytes the
        store copied itself.
        """
        ...

    def start_compose(
        self, key: str, pieces: Sequence[Piece], *, if_absent: bool = False
    ) -> Composition:
        """`compose`, begun before the sources exist: see `Composition`. Sources are told to it
        as they are written; `finish` writes the same object `compose` would."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a string prefix, not a directory), in
        key order, fetched page by page."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object at `key`; no object there is fine. ObjectRetained (naming the key
        and, when known, the date it becomes deletable) when the bucket's Object Lock or WORM
        refuses it."""
        ...

    def list_uploads(
        self, prefix: str = "", *, older_than: timedelta | None = None
    ) -> Iterator[MultipartUpload]:
        """Multipart uploads still open under `prefix` (for gc), only those initiated more than
        `older_than` ago when given: a younger one may belong to a write still running.

        The local store reports its temporary files of unfinished writes the same way.
        """
        ...

    def abort_upload(self, upload: MultipartUpload) -> None:
        """Abort (or for local files, remove) an unfinished write; gone already is fine."""
        ...


@runtime_checkable
class Presigning(Protocol):
    """An optional capability (S3, OSS): a URL that lets anyone holding it GET one object for a
    while, without credentials. The read-only registry redirects blob pulls and the catalog its
    tar downloads there, so the bytes go from the store to the client and not through bale."""

    def presign(self, key: str, *, expires: int = 900, filename: str | None = None) -> str | None:
        """A GET URL for `key`, valid `expires` seconds; `filename` makes the response an
        attachment of that name (Content-Disposition). Nothing is contacted: a missing key is
        the URL's 404 later. None when a URL alone cannot read this store's objects (keys that
        must travel in headers, as with SSE-C): the caller streams the object instead."""
        ...


def attachment(filename: str) -> str:
    """A Content-Disposition value that saves the response as `filename`: the same whether a
    presigned URL asks the store for it or bale streams the object itself."""
    plain = filename.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"
