"""What S3 and OSS stores share: one ObjectStore built on a bucket's HTTP calls.

`RemoteStore` holds the logic the two providers agree on, once: key checks and prefixes, the
retry-and-wrap of every call, ranges, paging, the multipart writes (`put`, `put_stream` and
`compose` on the PartSink primitives), completion whose answer was lost, and aborts repeated until
no part is left. A backend supplies its differences as data (`Provider`) and as small hooks that
make one SDK call each (`_head_object`, `_put_object`, `_complete`, ...). Hooks take and return
full object names (prefix included); mapping them to and from keys happens here.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, ClassVar, Self, TypeVar

from pipeline.errors import (
    ObjectFrozen,
    ObjectRetained,
    StoreError,
    StoreNotFound,
    StoreUnusable,
    TransferError,
    UsageError,
)
from pipeline.store import keys
from pipeline.store.base import (
    CopyRange,
    MultipartUpload,
    ObjectInfo,
    Piece,
    Readable,
    WriteResult,
)
from pipeline.store.classes import (
    RestoreState,
    Thaw,
    check_storage_class,
    check_tier,
    restore_time,
)
from pipeline.store.compose import StreamingComposition, plan_compose
from pipeline.store.encryption import NONE, Encryption
from pipeline.store.multipart import (
    DEFAULT_PARALLEL,
    DEFAULT_PART_SIZE,
    Part,
    PartLimits,
    stream_upload,
)
from pipeline.store.protection import NO_LOCK, Lock, Protection
from pipeline.transfer.retry import RetryPolicy, call_with_retry, describe_error

T = TypeVar("T")

_ABORT_ATTEMPTS = 3

Span = tuple[int, int | None]
"""A byte range as first and last offset (inclusive; None for "to the end")."""

# What `RemoteStore.check` found wrong, as a provider's `problem` names it.
NO_BUCKET = "no-bucket"
NO_CREDENTIALS = "no-credentials"
REFUSED = "refused"
DENIED = "denied"
UNREACHABLE = "unreachable"

_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def network_reason(exc: BaseException) -> str:
    """Why a connection failed, in the system's words (`Connection refused`, `Name or service
    not known`), out of the layers of wrappers around it; else the error's own line."""
    m = _ERRNO_TEXT.search(str(exc))
    return m.group(1).strip().lower() if m else describe_error(exc)


WRITE_PROBE = "bale-write-check-"
"""Name (under the prefix) of the multipart upload `check(write=True)` starts and aborts: were
an abort ever lost, gc reports and removes it like any stale upload."""


def service_error(
    code: str,
    status: int,
    message: str,
    *,
    bucket: str,
    what: str,
    credential_codes: frozenset[str],
    not_found_codes: frozenset[str] = frozenset(),
) -> StoreError:
    """One line for an error answer from the service (both speak S3's codes), naming the
    bucket or object (never credentials)."""
    if code == "NoSuchBucket":
        return StoreError(f"bucket {bucket} does not exist ({what})")
    if code == "InvalidObjectState":
        return ObjectFrozen(
            f"{what}: in an archive storage class and not restored (thaw it first)", key=what
        )
    if code in not_found_codes or (status == 404 and code != "NoSuchUpload"):
        return StoreNotFound(f"{what}: not found")
    if code in credential_codes:
        return StoreError(f"credentials rejected for bucket {bucket} ({code})")
    if code == "AccessDenied" or status == 403:
        return StoreError(f"access denied to bucket {bucket} ({what})")
    if code == "InvalidRange" or status == 416:
        return StoreError(f"{what}: range not satisfiable")
    lines = message.splitlines()
    detail = f": {lines[0][:200]}" if lines and lines[0] else ""
    return StoreError(f"{what}: {code or 'HTTP ' + str(status)}{detail}")


class StoreBody:
    """A GET body as a `Readable`; a backend's subclass turns its SDK's errors in `read` into
    StoreError."""

    def __init__(self, raw: Any, bucket: str, what: str) -> None:
        self._raw = raw
        self._bucket = bucket
        self._what = what

    def read(self, n: int = -1, /) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()

    def __enter__(self) -> StoreBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Empty:
    """The body of a zero-length range, which is never asked of the server."""

    def read(self, n: int = -1, /) -> bytes:
        return b""

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Provider:
    """What differs between providers besides the calls themselves."""

    scheme: str
    """URL scheme, `s3` or `oss`."""
    name: str
    """The provider in messages: `S3`."""
    errors: tuple[type[BaseException], ...]
    """The SDK's exceptions that a call's failure turns into StoreError."""
    is_transient: Callable[[BaseException], bool]
    store_error: Callable[[BaseException, str, str], StoreError]
    """`(exception, bucket, what)` → the one-line error a user sees."""
    body: type[StoreBody]
    initiate_op: str
    """The provider's name for starting a multipart upload, for retry log lines."""
    problem: Callable[[BaseException], tuple[str, str] | None]
    """What an SDK exception says is wrong with the store as a whole (`NO_BUCKET`, `REFUSED`,
    ...) and its detail, None for anything else (a failure of that one call)."""
    credentials_hint: str
    """How to give credentials, for the message when there are none."""


def _thaw_of(archived: bool, restore: RestoreState | None) -> Thaw | None:
    """What a HEAD says about thawing: None when a restore must be asked for."""
    if not archived:
        return Thaw.NOT_NEEDED
    if restore is None:
        return None
    return Thaw.IN_PROGRESS if restore.ongoing else Thaw.READY


class RemoteStore(ABC):
    """`scheme://bucket/prefix` (see ObjectStore for the contract, PartSink for the primitives)."""

    provider: ClassVar[Provider]
    limits: PartLimits

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        retry: RetryPolicy | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        parallel: int = DEFAULT_PARALLEL,
        encryption: Encryption = NONE,
    ) -> None:
        if not bucket:
            raise StoreError(f"{self.provider.name} store needs a bucket")
        self.encryption = encryption.check_for(self.provider.scheme)
        """Asked of the provider on every write (and for SSE-C on every read): encryption.py."""
        self.lock: Lock = NO_LOCK
        """What new objects are written with on an Object Lock bucket (`with_lock`)."""
        self._bucket_state: dict[str, Any] = {}
        """What was learnt of the bucket (its protection), shared by every view of this store."""
        self.bucket_name = bucket
        self.prefix = keys.normalize_prefix(prefix)
        self.part_size = part_size
        self.parallel = max(1, parallel)
        self._part_slots = threading.Semaphore(self.parallel + 1)
        """Parts read or in flight across every `put_stream` of this store (--jobs blobs at
        once): one being read and `parallel` uploading for a lone blob, as before."""
        self.page_size = 1000
        self.retry = retry or RetryPolicy()
        self.storage_class: str | None = None
        scheme = self.provider.scheme
        self.url = f"{scheme}://{bucket}/{self.prefix}" if self.prefix else f"{scheme}://{bucket}"

    # -- helpers ---------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return keys.join(self.prefix, keys.check_key(key))

    def describe(self, key: str) -> str:
        return self._where(keys.join(self.prefix, key))

    def _where(self, name: str) -> str:
        """`s3://bucket/name` for messages, from a full object name (or name prefix)."""
        return f"{self.provider.scheme}://{self.bucket_name}/{name}"

    def _call(
        self,
        op: str,
        what: str,
        fn: Callable[[], T],
        is_transient: Callable[[BaseException], bool] | None = None,
    ) -> T:
        provider = self.provider
        errors: tuple[type[BaseException], ...] = (*provider.errors, TransferError)
        try:
            return call_with_retry(
                self.retry,
                fn,
                describe=f"{op} {what}",
                is_transient=is_transient or provider.is_transient,
            )
        except errors as exc:
            raise self._store_error(exc, what) from exc

    def _store_error(self, exc: BaseException, what: str) -> StoreError:
        """The one-line error for a failed call on `what` (a backend adds what only it can
        tell, such as an SSE-C key that does not match)."""
        return self.provider.store_error(exc, self.bucket_name, what)

    @staticmethod
    def _span(start: int, length: int | None) -> Span | None:
        """The range to ask for, None for the whole object."""
        if start < 0 or (length is not None and length < 0):
            raise StoreError(f"invalid range {start}+{length}")
        if start == 0 and length is None:
            return None
        return (start, None if length is None else start + length - 1)

    # -- the up-front check ----------------------------------------------------------------

    @property
    @abstractmethod
    def endpoint_shown(self) -> str:
        """The endpoint requests go to, for messages."""

    def check(self, *, write: bool = False) -> None:
        """LIST one key under the prefix; with `write`, start a multipart upload there and abort
        it. The upload is what every archive write needs (PutObject permission, the abort
        that cleans a failed write) and, unlike a scratch object, leaves nothing even in a
        versioned bucket or for credentials that may write but not delete."""
        full = keys.join(self.prefix, "")
        writing = False
        try:
            list_one = partial(self._list_page, full, None, 1)
            self._call("LIST", self.url, list_one, self._transient_here)
            if write:
                writing = True
                name = keys.join(self.prefix, WRITE_PROBE + uuid.uuid4().hex[:12])
                initiate = self.provider.initiate_op
                upload_id = self._call(initiate, self.url, lambda: self._initiate(name))
                self._call("AbortMultipartUpload", self.url, lambda: self._abort(name, upload_id))
        except StoreUnusable:
            raise  # said already, more precisely (an encryption the server refuses)
        except StoreError as exc:
            found = self._problem(exc)
            if found is None:
                raise
            raise StoreUnusable(self._unusable(*found, writing=writing)) from exc

    def _transient_here(self, exc: BaseException) -> bool:
        """Worth another try at the first request: not when nothing answers at the endpoint
        (refused, no such host, no connection in time), which is said at once, not after
        every backoff of --retries."""
        found = self.provider.problem(exc)
        return (found is None or found[0] != UNREACHABLE) and self.provider.is_transient(exc)

    def _problem(self, exc: BaseException) -> tuple[str, str] | None:
        """The first store-wide problem along `exc`'s chain of causes."""
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, self.provider.errors):
                return self.provider.problem(seen)
            seen = seen.__cause__
        return None

    def _unusable(self, kind: str, detail: str, *, writing: bool) -> str:
        """The one line `check` ends a command with."""
        name = self.provider.name
        if kind == NO_BUCKET:
            return f"{self.url}: bucket {self.bucket_name} does not exist at {self.endpoint_shown}"
        if kind == NO_CREDENTIALS:
            return f"{self.url}: no {name} credentials ({self.provider.credentials_hint})"
        if kind == REFUSED:
            return f"{self.url}: {name} refused these credentials ({detail})"
        if kind == DENIED:
            verb = "writing" if writing else "reading"
            return f"{self.url}: access denied for {verb} with these credentials ({detail})"
        return f"{self.url}: endpoint {self.endpoint_shown} unreachable ({detail})"

    # -- storage classes -------------------------------------------------------------------

    def with_storage_class(self, storage_class: str | None) -> RemoteStore:
        """A view of this store (same client, connections and part slots) writing new objects
        in `storage_class`; UnknownStorageClass before anything is written."""
        view = copy.copy(self)
        scheme = self.provider.scheme
        view.storage_class = check_storage_class(scheme, storage_class) if storage_class else None
        return view

    # -- protection (Object Lock, WORM) ----------------------------------------------------

    def protection(self) -> Protection:
        """Asked of the bucket once (GetObjectLockConfiguration, GetBucketWorm), then kept
        for every view of this store."""
        known = self._bucket_state.get("protection")
        if known is None:
            known = self._call("GetBucketProtection", self.url, self._get_protection)
            self._bucket_state["protection"] = known
        return known

    def _known_protection(self) -> Protection | None:
        """The bucket's protection if it was asked already (no request)."""
        return self._bucket_state.get("protection")

    def with_lock(self, lock: Lock) -> Self:
        """A view of this store writing every new object with `lock`."""
        self._check_lock(lock)
        view = copy.copy(self)
        view.lock = lock
        return view

    @abstractmethod
    def _check_lock(self, lock: Lock) -> None:
        """Refuse (UsageError) a lock this provider's objects cannot carry."""

    @abstractmethod
    def _get_protection(self) -> Protection:
        """The bucket's lock configuration (UNPROTECTED when it has none)."""

    def _retained(self, name: str, info: ObjectInfo | None) -> ObjectRetained:
        """The error for a delete or overwrite of object `name` the bucket refused, with the
        date it becomes deletable where its HEAD (`info`) tells."""
        retention = info.retention if info is not None else None
        until = retention.until if retention is not None else None
        hold = retention is not None and retention.legal_hold
        why = (
            "under a legal hold"
            if hold
            else (f"retained until {until.isoformat()}" if until is not None else "retained")
        )
        return ObjectRetained(
            f"{self._where(name)}: {why} ({self._protection_said()})",
            key=keys.strip(self.prefix, name),
            until=until,
            legal_hold=hold,
        )

    def _protection_said(self) -> str:
        known = self._known_protection()
        return str(known) if known is not None and known.protected else "the bucket refused it"

    def restore(self, key: str, *, days: int = 1, tier: str = "Standard") -> Thaw:
        tier = check_tier(tier)
        if days < 1:
            raise UsageError(f"a restore lasts at least 1 day, not {days}")
        info = self.head(key)
        if info is None:
            raise StoreNotFound(f"{self.describe(key)}: not found")
        state = _thaw_of(info.archived, info.restore)
        if state is not None:
            return state
        name = self._name(key)
        storage_class = info.storage_class or ""
        restore_time(storage_class, tier)  # a tier the class does not offer: refused here
        try:
            self._call(
                "RestoreObject",
                self.describe(key),
                lambda: self._restore_object(name, days, tier, storage_class),
            )
        except StoreError:
            # A server may keep an archive class's name and have no restore (Ceph RGW 16
            # serves such objects as they are): readable means nothing to thaw.
            if self._readable(key, info.size):
                return Thaw.NOT_NEEDED
            raise
        after = self.head(key)
        if after is None:
            raise StoreNotFound(f"{self.describe(key)}: not found")
        return _thaw_of(after.archived, after.restore) or Thaw.IN_PROGRESS

    def _readable(self, key: str, size: int) -> bool:
        try:
            self.read(key, 0, 1 if size else None)
        except StoreError:
            return False
        return True

    # -- reading ---------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        name = self._name(key)

        def head() -> ObjectInfo | None:
            info = self._head_object(name)
            return None if info is None else dataclasses.replace(info, key=key)

        return self._call("HEAD", self.describe(key), head)

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        name = self._name(key)
        span = self._span(start, length)
        if length == 0:
            return b""
        return self._call("GET", self.describe(key), lambda: self._get(name, span))

    def open(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        name = self._name(key)
        span = self._span(start, length)
        what = self.describe(key)
        if length == 0:
            raw: Any = _Empty()
        else:
            raw = self._call("GET", what, lambda: self._open(name, span))
        return self.provider.body(raw, self.bucket_name, what)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return self.read(key, start, length)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = keys.join(self.prefix, prefix)
        what = self._where(full)
        token: str | None = None
        while True:
            items, token = self._call("LIST", what, partial(self._list_page, full, token))
            for item in items:
                yield dataclasses.replace(item, key=keys.strip(self.prefix, item.key))
            if token is None:
                return

    # -- writing ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> WriteResult:
        written = self.put_single(key, bytes(data), if_absent=if_absent)
        return WriteResult(key=key, size=len(data), written=written, sent=len(data))

    def put_stream(
        self, key: str, stream: Readable, size: int | None = None, *, if_absent: bool = False
    ) -> WriteResult:
        self._name(key)
        return stream_upload(
            self,
            key,
            stream,
            size,
            if_absent=if_absent,
            part_size=self.part_size,
            parallel=self.parallel,
            slots=self._part_slots,
        )

    def compose(self, key: str, pieces: Sequence[Piece], *, if_absent: bool = False) -> WriteResult:
        with self.start_compose(key, pieces, if_absent=if_absent) as composition:
            return composition.finish()

    def start_compose(
        self, key: str, pieces: Sequence[Piece], *, if_absent: bool = False
    ) -> StreamingComposition:
        self._name(key)
        for piece in pieces:
            if isinstance(piece, CopyRange):
                self._name(piece.key)
        plan = plan_compose(pieces, self.limits, self.part_size)
        return StreamingComposition(self, key, plan, if_absent=if_absent, parallel=self.parallel)

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._call("DELETE", self.describe(key), lambda: self._delete_object(name))

    # -- multipart primitives (PartSink) -----------------------------------------------------

    def put_single(self, key: str, data: bytes, *, if_absent: bool) -> bool:
        name = self._name(key)
        return self._call(
            "PUT", self.describe(key), lambda: self._put_object(name, data, if_absent=if_absent)
        )

    def initiate(self, key: str) -> str:
        name = self._name(key)
        return self._call(
            self.provider.initiate_op, self.describe(key), lambda: self._initiate(name)
        )

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> Part:
        name = self._name(key)
        return self._call(
            f"UploadPart {number}",
            self.describe(key),
            lambda: self._upload_part(name, upload_id, number, data),
        )

    def copy_part(self, key: str, upload_id: str, number: int, source: CopyRange) -> Part:
        name = self._name(key)
        src = self._name(source.key)
        span = (source.start, source.start + source.length - 1)
        return self._call(
            f"UploadPartCopy {number}",
            self.describe(source.key),
            lambda: self._copy_part(name, upload_id, number, src, span),
        )

    def complete(
        self, key: str, upload_id: str, parts: builtins.list[Part], *, if_absent: bool
    ) -> bool:
        name = self._name(key)
        attempts = 0

        def complete() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return self._complete(name, upload_id, parts, if_absent=if_absent)
            except Exception as exc:
                # NoSuchUpload on a later attempt: an earlier one completed but its answer was
                # lost, or a concurrent writer won; either way an object is there now.
                if self._no_such_upload(exc) and attempts > 1 and self.head(key) is not None:
                    return not if_absent
                raise

        return self._call("CompleteMultipartUpload", self.describe(key), complete)

    def abort(self, key: str, upload_id: str) -> None:
        name = self._name(key)
        what = self.describe(key)
        # The store may still be landing a part that was in flight when the abort arrived;
        # repeat until ListParts shows nothing, as the S3 documentation advises.
        for _ in range(_ABORT_ATTEMPTS):
            if not self._call("AbortMultipartUpload", what, lambda: self._abort(name, upload_id)):
                return
            if not self._call("ListParts", what, lambda: self._parts_left(name, upload_id)):
                return
        raise StoreError(
            f"{what}: upload {upload_id} still has parts after {_ABORT_ATTEMPTS} aborts"
        )

    # -- stale uploads ---------------------------------------------------------------------

    def list_uploads(
        self, prefix: str = "", *, older_than: timedelta | None = None
    ) -> Iterator[MultipartUpload]:
        full = keys.join(self.prefix, prefix)
        what = self._where(full)
        cutoff = datetime.now(UTC) - older_than if older_than is not None else None
        markers: tuple[str, str] | None = ("", "")
        while markers is not None:
            page = partial(self._list_uploads_page, full, *markers)
            uploads, markers = self._call("ListMultipartUploads", what, page)
            for upload in uploads:
                initiated = upload.initiated
                if cutoff is not None and initiated is not None and initiated > cutoff:
                    continue
                yield dataclasses.replace(upload, key=keys.strip(self.prefix, upload.key))

    def abort_upload(self, upload: MultipartUpload) -> None:
        self.abort(upload.key, upload.upload_id)

    # -- provider hooks: one SDK call each, on full object names, retried by the caller -----

    @abstractmethod
    def _restore_object(self, name: str, days: int, tier: str, storage_class: str) -> None:
        """Ask for a restore of an archived object (`storage_class` is its class); one
        already running is fine."""

    @abstractmethod
    def _head_object(self, name: str) -> ObjectInfo | None:
        """The object's size, date and ETag, None when there is none (a missing bucket raises)."""

    @abstractmethod
    def _get(self, name: str, span: Span | None) -> bytes:
        """The object's bytes, or those of `span`."""

    @abstractmethod
    def _open(self, name: str, span: Span | None) -> Any:
        """The SDK's streaming body of the object or of `span`."""

    @abstractmethod
    def _list_page(
        self, prefix: str, token: str | None, limit: int | None = None
    ) -> tuple[builtins.list[ObjectInfo], str | None]:
        """One page (of `limit` objects, default `page_size`) under `prefix` from `token`, and
        the next page's token (None after the last page)."""

    @abstractmethod
    def _delete_object(self, name: str) -> None: ...

    @abstractmethod
    def _put_object(self, name: str, data: bytes, *, if_absent: bool) -> bool:
        """One PUT; False when `if_absent` found the name taken."""

    @abstractmethod
    def _initiate(self, name: str) -> str:
        """A new multipart upload's id."""

    @abstractmethod
    def _upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Part:
        """Upload a part, sent with the checksum the server checks; the part with its ETag,
        the provider's CRC64 (OSS) and SHA-256 (S3 composite checksum) where there are any."""

    @abstractmethod
    def _copy_part(self, name: str, upload_id: str, number: int, source: str, span: Span) -> Part:
        """Copy `span` of object `source` as a part, as for `_upload_part`."""

    @abstractmethod
    def _complete(
        self, name: str, upload_id: str, parts: builtins.list[Part], *, if_absent: bool
    ) -> bool:
        """Complete the upload; False when `if_absent` found the name taken."""

    @abstractmethod
    def _no_such_upload(self, exc: BaseException) -> bool:
        """Whether `exc` says the upload is gone (completed or aborted)."""

    @abstractmethod
    def _abort(self, name: str, upload_id: str) -> bool:
        """Abort the upload; False when it was gone already."""

    @abstractmethod
    def _parts_left(self, name: str, upload_id: str) -> bool:
        """Whether parts of an aborted upload are still listed (False when it is gone)."""

    @abstractmethod
    def _list_uploads_page(
        self, prefix: str, key_marker: str, upload_marker: str
    ) -> tuple[builtins.list[MultipartUpload], tuple[str, str] | None]:
        """One page of open uploads under `prefix` after the markers (both "" for the first),
        and the next page's markers (None after the last page)."""
