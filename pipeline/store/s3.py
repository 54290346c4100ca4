"""Amazon S3 and S3-compatible stores, through boto3.

The client is set up for S3-compatible servers as much as for AWS: checksums only when an
operation requires them (boto3 >= 1.36 otherwise sends trailers many servers reject), path-style
addressing whenever an endpoint is given, a connection pool large enough for parallel parts, and
botocore's own retries off so that throttling goes through bale's one retry policy.
Create-if-absent is `If-None-Match: *` on PutObject and CompleteMultipartUpload.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError

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
    S3_LIMITS,
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

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
_ABORT_ATTEMPTS = 3


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _unquote(etag: str | None) -> str | None:
    """ETags without their quotes, as oss2 reports them, so backends agree."""
    return etag.strip('"') if etag else etag


def is_transient(exc: BaseException) -> bool:
    """Throttling, timeouts and 5xx from S3, and transient network errors."""
    if isinstance(exc, ClientError):
        return _code(exc) in _TRANSIENT_CODES or _status(exc) in RETRYABLE_STATUS
    return is_transient_error(exc)


def store_error(exc: BaseException, bucket: str, what: str) -> StoreError:
    """One line for an S3 failure, naming the bucket or object (never credentials)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, ClientError):
        code, status = _code(exc), _status(exc)
        if code == "NoSuchBucket":
            return StoreError(f"bucket {bucket} does not exist ({what})")
        if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchUpload"):
            return StoreNotFound(f"{what}: not found")
        if code == "AccessDenied" or (status == 403 and code not in _CREDENTIAL_CODES):
            return StoreError(f"access denied to bucket {bucket} ({what})")
        if code in _CREDENTIAL_CODES:
            return StoreError(f"credentials rejected for bucket {bucket} ({code})")
        if code == "InvalidRange" or status == 416:
            return StoreError(f"{what}: range not satisfiable")
        message = str(exc.response.get("Error", {}).get("Message", "") or "").splitlines()
        detail = f": {message[0][:200]}" if message and message[0] else ""
        return StoreError(f"{what}: {code or 'HTTP ' + str(status)}{detail}")
    if isinstance(exc, TransferError):
        return StoreError(str(exc))
    return StoreError(f"{what}: {describe_error(exc)}")


def make_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    max_connections: int = 64,
) -> Any:
    """A boto3 S3 client: explicit credentials if given, else the standard AWS chain."""
    session = boto3.session.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
    )
    region = region or session.region_name or ("us-east-1" if endpoint_url else None)
    config = botocore.config.Config(
        region_name=region,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint_url else {},
        max_pool_connections=max_connections,
        retries={"total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


class _Body:
    """An S3 GET body as a `Readable` that raises StoreError, not botocore's errors."""

    def __init__(self, body: Any, bucket: str, what: str) -> None:
        self._body = body
        self._bucket = bucket
        self._what = what

    def read(self, n: int = -1, /) -> bytes:
        try:
            return bytes(self._body.read(None if n is None or n < 0 else n))
        except (BotoCoreError, ClientError, OSError) as exc:
            raise store_error(exc, self._bucket, self._what) from exc

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3Store:
    """`s3://bucket/prefix` (see ObjectStore for the contract)."""

    limits: PartLimits = S3_LIMITS

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        retry: RetryPolicy | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        parallel: int = DEFAULT_PARALLEL,
    ) -> None:
        if not bucket:
            raise StoreError("S3 store needs a bucket")
        self.bucket = bucket
        self.prefix = keys.normalize_prefix(prefix)
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        self.parallel = max(1, parallel)
        self.page_size = 1000
        self.retry = retry or RetryPolicy()
        self.client = client or make_client(
            endpoint_url=endpoint_url,
            region=region,
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
            max_connections=max(64, 4 * self.parallel),
        )
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint_url={self.endpoint_url!r})"

    # -- helpers ---------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return keys.join(self.prefix, keys.check_key(key))

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{keys.join(self.prefix, key)}"

    def _call(self, op: str, what: str, fn: Callable[[], T]) -> T:
        try:
            return call_with_retry(
                self.retry, fn, describe=f"{op} {what}", is_transient=is_transient
            )
        except (BotoCoreError, ClientError, TransferError) as exc:
            raise store_error(exc, self.bucket, what) from exc

    # -- reading ---------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        name = self._name(key)

        def head() -> ObjectInfo | None:
            try:
                r = self.client.head_object(Bucket=self.bucket, Key=name)
            except ClientError as exc:
                if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                    return None
                raise
            return ObjectInfo(
                key=key,
                size=int(r["ContentLength"]),
                modified=r.get("LastModified"),
                etag=_unquote(r.get("ETag")),
            )

        return self._call("HEAD", self.describe(key), head)

    def _range(self, start: int, length: int | None) -> str | None:
        if start < 0 or (length is not None and length < 0):
            raise StoreError(f"invalid range {start}+{length}")
        if start == 0 and length is None:
            return None
        end = "" if length is None else str(start + length - 1)
        return f"bytes={start}-{end}"

    def _get_args(self, key: str, start: int, length: int | None) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._name(key)}
        byte_range = self._range(start, length)
        if byte_range:
            args["Range"] = byte_range
        return args

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        args = self._get_args(key, start, length)
        if length == 0:
            return b""

        def get() -> bytes:
            body = self.client.get_object(**args)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return self._call("GET", self.describe(key), get)

    def open(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        args = self._get_args(key, start, length)
        what = self.describe(key)
        if length == 0:
            return _Body(_Empty(), self.bucket, what)
        response = self._call("GET", what, lambda: self.client.get_object(**args))
        return _Body(response["Body"], self.bucket, what)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return self.read(key, start, length)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = keys.join(self.prefix, prefix)
        what = f"s3://{self.bucket}/{full}"
        token: str | None = None
        while True:
            args: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": full,
                "MaxKeys": self.page_size,
            }
            if token:
                args["ContinuationToken"] = token
            page = self._call("LIST", what, lambda a=args: self.client.list_objects_v2(**a))  # type: ignore[misc]
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=keys.strip(self.prefix, item["Key"]),
                    size=int(item["Size"]),
                    modified=item.get("LastModified"),
                    etag=_unquote(item.get("ETag")),
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
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
        self._call(
            "DELETE",
            self.describe(key),
            lambda: self.client.delete_object(Bucket=self.bucket, Key=name),
        )

    # -- multipart primitives (PartSink) -----------------------------------------------------

    def put_single(self, key: str, data: bytes, *, if_absent: bool) -> bool:
        name = self._name(key)

        def put() -> bool:
            extra = {"IfNoneMatch": "*"} if if_absent else {}
            try:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=data, **extra)
            except ClientError as exc:
                if if_absent and _status(exc) == 412:
                    return False
                if _status(exc) == 409 and _code(exc) == "ConditionalRequestConflict":
                    raise Retryable("409 conflicting concurrent write") from exc
                raise
            return True

        return self._call("PUT", self.describe(key), put)

    def initiate(self, key: str) -> str:
        name = self._name(key)
        r = self._call(
            "CreateMultipartUpload",
            self.describe(key),
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=name),
        )
        return str(r["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> Part:
        name = self._name(key)
        r = self._call(
            f"UploadPart {number}",
            self.describe(key),
            lambda: self.client.upload_part(
                Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data
            ),
        )
        return Part(number=number, etag=str(r["ETag"]), size=len(data))

    def copy_part(self, key: str, upload_id: str, number: int, source: CopyRange) -> Part:
        name = self._name(key)
        src = self._name(source.key)
        last = source.start + source.length - 1
        r = self._call(
            f"UploadPartCopy {number}",
            self.describe(source.key),
            lambda: self.client.upload_part_copy(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": src},
                CopySourceRange=f"bytes={source.start}-{last}",
            ),
        )
        return Part(number=number, etag=str(r["CopyPartResult"]["ETag"]), size=source.length)

    def complete(self, key: str, upload_id: str, parts: list[Part], *, if_absent: bool) -> bool:
        name = self._name(key)
        body = {"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]}
        attempts = 0

        def complete() -> bool:
            nonlocal attempts
            attempts += 1
            extra = {"IfNoneMatch": "*"} if if_absent else {}
            try:
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload=body,
                    **extra,
                )
            except ClientError as exc:
                if if_absent and _status(exc) == 412:
                    return False
                if _status(exc) == 409 and _code(exc) == "ConditionalRequestConflict":
                    raise Retryable("409 conflicting concurrent write") from exc
                # NoSuchUpload on a later attempt: an earlier one completed but its answer was
                # lost, or a concurrent writer won; either way an object is there now.
                if _code(exc) == "NoSuchUpload" and attempts > 1 and self.head(key) is not None:
                    return not if_absent
                raise
            return True

        return self._call("CompleteMultipartUpload", self.describe(key), complete)

    def abort(self, key: str, upload_id: str) -> None:
        name = self._name(key)
        what = self.describe(key)
        ids = {"Bucket": self.bucket, "Key": name, "UploadId": upload_id}

        def abort() -> bool:
            try:
                self.client.abort_multipart_upload(**ids)
            except ClientError as exc:
                if _code(exc) == "NoSuchUpload":
                    return False
                raise
            return True

        def parts_left() -> bool:
            try:
                return bool(self.client.list_parts(**ids).get("Parts"))
            except ClientError as exc:
                if _code(exc) == "NoSuchUpload":
                    return False
                raise

        # S3 may still be landing a part that was in flight when the abort arrived; repeat
        # until ListParts shows nothing, as the S3 documentation advises.
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
        what = f"s3://{self.bucket}/{full}"
        cutoff = datetime.now(UTC) - older_than if older_than is not None else None
        key_marker = upload_marker = ""
        while True:
            args: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": full,
                "MaxUploads": self.page_size,
            }
            if key_marker:
                args["KeyMarker"] = key_marker
                args["UploadIdMarker"] = upload_marker
            page = self._call(
                "ListMultipartUploads",
                what,
                lambda a=args: self.client.list_multipart_uploads(**a),  # type: ignore[misc]
            )
            for item in page.get("Uploads", []):
                initiated = item.get("Initiated")
                if cutoff is not None and initiated is not None and initiated > cutoff:
                    continue
                yield MultipartUpload(
                    key=keys.strip(self.prefix, item["Key"]),
                    upload_id=item["UploadId"],
                    initiated=initiated,
                )
            if not page.get("IsTruncated"):
                return
            key_marker = page.get("NextKeyMarker", "")
            upload_marker = page.get("NextUploadIdMarker", "")
            if not key_marker:
                return

    def abort_upload(self, upload: MultipartUpload) -> None:
        self.abort(upload.key, upload.upload_id)


class _Empty:
    def read(self, n: int = -1, /) -> bytes:
        return b""

    def close(self) -> None:
        pass
