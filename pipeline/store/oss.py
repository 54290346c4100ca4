"""Alibaba Cloud OSS stores, through oss2.

OSS is not S3 with another name: its XML has no namespace, create-if-absent is
`x-oss-forbid-overwrite: true` (409 FileAlreadyExists), parts may be as small as 100 KB, and
oss2 checks every upload against the server's CRC64 (`enable_crc`, kept on: CRC64 runs
through crcmod's C extension at several hundred MiB/s). Unsatisfiable ranges are asked to fail
(`x-oss-range-behavior: standard`) rather than silently return the whole object. V4 signing
needs a region: `OSS_REGION`, or the one in an `oss-<region>.aliyuncs.com` endpoint.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import oss2
import oss2.exceptions

from pipeline.errors import StoreError, StoreNotFound, TransferError
from pipeline.store import keys
from pipeline.store.base import (
    CopyRange,
    MultipartUpload,
    ObjectInfo,
    Piece,
    Readable,
    WriteResult,
)
from pipeline.store.compose import plan_compose, run_compose
from pipeline.store.multipart import (
    DEFAULT_PARALLEL,
    DEFAULT_PART_SIZE,
    OSS_LIMITS,
    Part,
    PartLimits,
    stream_upload,
)
from pipeline.transfer.retry import (
    RETRYABLE_STATUS,
    Retryable,
    RetryPolicy,
    call_with_retry,
    describe_error,
    is_transient_error,
)

log = logging.getLogger("bale.store")

T = TypeVar("T")

FORBID_OVERWRITE = {"x-oss-forbid-overwrite": "true"}
STANDARD_RANGE = {"x-oss-range-behavior": "standard"}

_TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "InternalError", "ServiceUnavailable", "SlowDown", "Throttling"}
)
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "SecurityTokenExpired",
        "InvalidSecurityToken",
    }
)
_ENDPOINT_REGION = re.compile(r"(?:^|//)oss-([a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com")
_ABORT_ATTEMPTS = 3


def region_from_endpoint(endpoint: str) -> str | None:
    """`cn-hangzhou` from `https://oss-cn-hangzhou.aliyuncs.com` (None for other endpoints)."""
    m = _ENDPOINT_REGION.search(endpoint)
    return m.group(1) if m else None


def is_transient(exc: BaseException) -> bool:
    """Throttling, timeouts, 5xx, CRC mismatches in transit, and transient network errors."""
    if isinstance(exc, oss2.exceptions.InconsistentError):
        return True
    if isinstance(exc, oss2.exceptions.RequestError):
        return is_transient_error(exc)
    if isinstance(exc, oss2.exceptions.ServerError):
        return exc.code in _TRANSIENT_CODES or exc.status in RETRYABLE_STATUS
    return is_transient_error(exc)


def store_error(exc: BaseException, bucket: str, what: str) -> StoreError:
    """One line for an OSS failure, naming the bucket or object (never credentials)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, TransferError):
        return StoreError(str(exc))
    if isinstance(exc, oss2.exceptions.RequestError):
        return StoreError(f"{what}: {describe_error(exc)}")
    if isinstance(exc, oss2.exceptions.InconsistentError):
        return StoreError(f"{what}: CRC64 of the data differs between client and OSS")
    if isinstance(exc, oss2.exceptions.ClientError):
        return StoreError(f"{what}: {str(exc).splitlines()[0][:200]}")
    if isinstance(exc, oss2.exceptions.OssError):
        code, status = exc.code, exc.status
        if code == "NoSuchBucket":
            return StoreError(f"bucket {bucket} does not exist ({what})")
        if status == 404 and code != "NoSuchUpload":
            return StoreNotFound(f"{what}: not found")
        if code in _CREDENTIAL_CODES:
            return StoreError(f"credentials rejected for bucket {bucket} ({code})")
        if code == "AccessDenied" or status == 403:
            return StoreError(f"access denied to bucket {bucket} ({what})")
        if code == "InvalidRange" or status == 416:
            return StoreError(f"{what}: range not satisfiable")
        message = (exc.message or "").splitlines()
        detail = f": {message[0][:200]}" if message and message[0] else ""
        return StoreError(f"{what}: {code or 'HTTP ' + str(status)}{detail}")
    return StoreError(f"{what}: {describe_error(exc)}")


def _when(unix: int | None) -> datetime | None:
    return datetime.fromtimestamp(unix, UTC) if unix is not None else None


class _Body:
    """An OSS GET body as a `Readable` that raises StoreError, not oss2's errors."""

    def __init__(self, result: Any, bucket: str, what: str) -> None:
        self._result = result
        self._bucket = bucket
        self._what = what

    def read(self, n: int = -1, /) -> bytes:
        try:
            if n is None or n < 0:
                return bytes(self._result.read())
            return bytes(self._result.read(n)) if n else b""
        except (oss2.exceptions.OssError, OSError) as exc:
            raise store_error(exc, self._bucket, self._what) from exc
        except Exception as exc:  # requests' own errors while streaming the body
            if is_transient_error(exc):
                raise StoreError(f"{self._what}: {describe_error(exc)}") from exc
            raise

    def close(self) -> None:
        if self._result is not None:
            self._result.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OSSStore:
    """`oss://bucket/prefix` (see ObjectStore for the contract)."""

    limits: PartLimits = OSS_LIMITS

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        security_token: str | None = None,
        region: str | None = None,
        retry: RetryPolicy | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        parallel: int = DEFAULT_PARALLEL,
        timeout: float = 120.0,
    ) -> None:
        if not bucket:
            raise StoreError("OSS store needs a bucket")
        if not endpoint:
            raise StoreError("OSS store needs an endpoint")
        self.bucket_name = bucket
        self.prefix = keys.normalize_prefix(prefix)
        self.endpoint = endpoint
        self.region = region or region_from_endpoint(endpoint)
        self.part_size = part_size
        self.parallel = max(1, parallel)
        self.page_size = 1000
        self.retry = retry or RetryPolicy()
        auth: Any
        if access_key_id:
            credentials = oss2.credentials.StaticCredentialsProvider(
                access_key_id, access_key_secret or "", security_token or ""
            )
            auth = (
                oss2.ProviderAuthV4(credentials) if self.region else oss2.ProviderAuth(credentials)
            )
        else:
            auth = oss2.AnonymousAuth()
        try:
            self.bucket = oss2.Bucket(
                auth,
                endpoint,
                bucket,
                session=oss2.Session(pool_size=max(64, 4 * self.parallel)),
                connect_timeout=timeout,
                enable_crc=True,
                region=self.region,
            )
        except oss2.exceptions.ClientError as exc:
            raise StoreError(f"bad OSS endpoint {endpoint!r}") from exc
        self.url = f"oss://{bucket}/{self.prefix}" if self.prefix else f"oss://{bucket}"

    def __repr__(self) -> str:
        return f"OSSStore({self.url!r}, endpoint={self.endpoint!r})"

    # -- helpers ---------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return keys.join(self.prefix, keys.check_key(key))

    def describe(self, key: str) -> str:
        return f"oss://{self.bucket_name}/{keys.join(self.prefix, key)}"

    def _call(self, op: str, what: str, fn: Callable[[], T]) -> T:
        try:
            return call_with_retry(
                self.retry, fn, describe=f"{op} {what}", is_transient=is_transient
            )
        except (oss2.exceptions.OssError, TransferError) as exc:
            raise store_error(exc, self.bucket_name, what) from exc

    # -- reading ---------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        name = self._name(key)

        def head() -> ObjectInfo | None:
            try:
                r = self.bucket.head_object(name)
            except oss2.exceptions.NotFound as exc:
                if exc.code == "NoSuchBucket":
                    raise
                return None
            return ObjectInfo(
                key=key,
                size=int(r.content_length),
                modified=_when(r.last_modified),
                etag=r.etag,
            )

        return self._call("HEAD", self.describe(key), head)

    @staticmethod
    def _range(start: int, length: int | None) -> tuple[int, int | None] | None:
        if start < 0 or (length is not None and length < 0):
            raise StoreError(f"invalid range {start}+{length}")
        if start == 0 and length is None:
            return None
        return (start, None if length is None else start + length - 1)

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        name = self._name(key)
        byte_range = self._range(start, length)
        if length == 0:
            return b""

        def get() -> bytes:
            result = self.bucket.get_object(name, byte_range=byte_range, headers=STANDARD_RANGE)
            try:
                data = bytes(result.read())
            finally:
                result.close()
            whole = byte_range is None and result.server_crc is not None
            if whole and result.client_crc != result.server_crc:
                raise oss2.exceptions.InconsistentError("GET CRC64 mismatch", result.request_id)
            return data

        return self._call("GET", self.describe(key), get)

    def open(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        name = self._name(key)
        byte_range = self._range(start, length)
        what = self.describe(key)
        if length == 0:
            return _Body(_Empty(), self.bucket_name, what)
        result = self._call(
            "GET",
            what,
            lambda: self.bucket.get_object(name, byte_range=byte_range, headers=STANDARD_RANGE),
        )
        return _Body(result, self.bucket_name, what)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return self.read(key, start, length)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = keys.join(self.prefix, prefix)
        what = f"oss://{self.bucket_name}/{full}"
        token = ""
        while True:
            page = self._call(
                "LIST",
                what,
                lambda t=token: self.bucket.list_objects_v2(  # type: ignore[misc]
                    prefix=full, continuation_token=t, max_keys=self.page_size
                ),
            )
            for item in page.object_list:
                yield ObjectInfo(
                    key=keys.strip(self.prefix, item.key),
                    size=int(item.size),
                    modified=_when(item.last_modified),
                    etag=item.etag,
                )
            if not page.is_truncated or not page.next_continuation_token:
                return
            token = page.next_continuation_token

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
        )

    def compose(self, key: str, pieces: Sequence[Piece], *, if_absent: bool = False) -> WriteResult:
        self._name(key)
        for piece in pieces:
            if isinstance(piece, CopyRange):
                self._name(piece.key)
        plan = plan_compose(pieces, self.limits, self.part_size)
        return run_compose(self, key, plan, if_absent=if_absent, parallel=self.parallel)

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._call("DELETE", self.describe(key), lambda: self.bucket.delete_object(name))

    # -- multipart primitives (PartSink) -----------------------------------------------------

    def put_single(self, key: str, data: bytes, *, if_absent: bool) -> bool:
        name = self._name(key)

        def put() -> bool:
            try:
                self.bucket.put_object(name, data, headers=FORBID_OVERWRITE if if_absent else None)
            except oss2.exceptions.ServerError as exc:
                if if_absent and exc.status == 409 and exc.code == "FileAlreadyExists":
                    return False
                raise
            return True

        return self._call("PUT", self.describe(key), put)

    def initiate(self, key: str) -> str:
        name = self._name(key)
        r = self._call(
            "InitiateMultipartUpload",
            self.describe(key),
            lambda: self.bucket.init_multipart_upload(name),
        )
        return str(r.upload_id)

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> Part:
        name = self._name(key)
        r = self._call(
            f"UploadPart {number}",
            self.describe(key),
            lambda: self.bucket.upload_part(name, upload_id, number, data),
        )
        return Part(number=number, etag=str(r.etag), size=len(data), crc=r.crc)

    def copy_part(self, key: str, upload_id: str, number: int, source: CopyRange) -> Part:
        name = self._name(key)
        src = self._name(source.key)
        last = source.start + source.length - 1
        r = self._call(
            f"UploadPartCopy {number}",
            self.describe(source.key),
            lambda: self.bucket.upload_part_copy(
                self.bucket_name, src, (source.start, last), name, upload_id, number
            ),
        )
        return Part(number=number, etag=str(r.etag), size=source.length, crc=r.crc)

    def complete(self, key: str, upload_id: str, parts: list[Part], *, if_absent: bool) -> bool:
        name = self._name(key)
        infos = [oss2.models.PartInfo(p.number, p.etag, size=p.size, part_crc=p.crc) for p in parts]
        attempts = 0

        def complete() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                self.bucket.complete_multipart_upload(
                    name, upload_id, infos, headers=FORBID_OVERWRITE if if_absent else None
                )
            except oss2.exceptions.InconsistentError as exc:
                # The object is complete but its CRC64 is not what we sent: remove it.
                self.bucket.delete_object(name)
                raise StoreError(
                    f"{self.describe(key)}: CRC64 mismatch after upload; object removed"
                ) from exc
            except oss2.exceptions.ServerError as exc:
                if if_absent and exc.status == 409 and exc.code == "FileAlreadyExists":
                    return False
                if exc.code == "NoSuchUpload" and attempts > 1 and self.head(key) is not None:
                    return not if_absent
                if exc.status == 409 and exc.code != "FileAlreadyExists":
                    raise Retryable(f"409 {exc.code}") from exc
                raise
            return True

        return self._call("CompleteMultipartUpload", self.describe(key), complete)

    def abort(self, key: str, upload_id: str) -> None:
        name = self._name(key)
        what = self.describe(key)

        def abort() -> bool:
            try:
                self.bucket.abort_multipart_upload(name, upload_id)
            except oss2.exceptions.NoSuchUpload:
                return False
            return True

        def parts_left() -> bool:
            try:
                return bool(self.bucket.list_parts(name, upload_id).parts)
            except oss2.exceptions.NoSuchUpload:
                return False

        for _ in range(_ABORT_ATTEMPTS):
            if not self._call("AbortMultipartUpload", what, abort):
                return
            if not self._call("ListParts", what, parts_left):
                return
        raise StoreError(
            f"{what}: upload {upload_id} still has parts after {_ABORT_ATTEMPTS} aborts"
        )

    # -- stale uploads ---------------------------------------------------------------------

    def list_uploads(
        self, prefix: str = "", *, older_than: timedelta | None = None
    ) -> Iterator[MultipartUpload]:
        full = keys.join(self.prefix, prefix)
        what = f"oss://{self.bucket_name}/{full}"
        cutoff = datetime.now(UTC) - older_than if older_than is not None else None
        key_marker = upload_marker = ""
        while True:
            page = self._call(
                "ListMultipartUploads",
                what,
                lambda k=key_marker, u=upload_marker: self.bucket.list_multipart_uploads(  # type: ignore[misc]
                    prefix=full, key_marker=k, upload_id_marker=u, max_uploads=self.page_size
                ),
            )
            for item in page.upload_list:
                initiated = _when(item.initiation_date)
                if cutoff is not None and initiated is not None and initiated > cutoff:
                    continue
                yield MultipartUpload(
                    key=keys.strip(self.prefix, item.key),
                    upload_id=item.upload_id,
                    initiated=initiated,
                )
            if not page.is_truncated or not page.next_key_marker:
                return
            key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker

    def abort_upload(self, upload: MultipartUpload) -> None:
        self.abort(upload.key, upload.upload_id)


class _Empty:
    def read(self, n: int = -1, /) -> bytes:
        return b""

    def close(self) -> None:
        pass
