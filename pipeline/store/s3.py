"""Amazon S3 and S3-compatible stores, through boto3.

The client is set up for S3-compatible servers as much as for AWS: checksums only when an
operation requires them (boto3 >= 1.36 otherwise sends trailers many servers reject), path-style
addressing whenever an endpoint is given, a connection pool large enough for parallel parts, and
botocore's own retries off so that throttling goes through bale's one retry policy.
Create-if-absent is `If-None-Match: *` on PutObject and CompleteMultipartUpload where the server
honours it, and a HEAD before and after the write where it does not (probed once per endpoint:
s3_probe.py). Where the server checks it (the same probe), every upload carries its SHA-256
(`x-amz-checksum-sha256`; multipart uploads declare SHA256 and send each part's, S3's composite
checksum); elsewhere the payload hash boto3 signs is the guard. A body refused as damaged (400
BadDigest, XAmzContentSHA256Mismatch) is sent again: its bytes are in memory. An upload the server no longer knows (`NoSuchUpload`, or RGW's `NoSuchKey` after an
abort) is gone.
Everything but the boto3 calls is shared with OSS in remote.py.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import boto3
import botocore.config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from pipeline.errors import StoreError, TransferError
from pipeline.store.base import MultipartUpload, ObjectInfo, attachment
from pipeline.store.classes import S3_ARCHIVE, parse_restore
from pipeline.store.multipart import (
    DEFAULT_PARALLEL,
    DEFAULT_PART_SIZE,
    S3_LIMITS,
    Part,
    PartLimits,
)
from pipeline.store.remote import (
    DENIED,
    NO_BUCKET,
    NO_CREDENTIALS,
    REFUSED,
    UNREACHABLE,
    Provider,
    RemoteStore,
    Span,
    StoreBody,
    network_reason,
    service_error,
)
from pipeline.store.s3_probe import Integrity, ServerTraits, traits_of
from pipeline.transfer.retry import (
    RETRYABLE_STATUS,
    Retryable,
    RetryPolicy,
    describe_error,
    is_transient_error,
)

log = logging.getLogger("bale.store")

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
        "BadDigest",
        "XAmzContentSHA256Mismatch",
    }
)
"""BadDigest, XAmzContentSHA256Mismatch: the body's checksum or signed payload hash is not the
one of what the server received, damaged on the way; sending the same bytes again cures it."""
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_UPLOAD_GONE_CODES = frozenset({"NoSuchUpload", "NoSuchKey"})
"""An upload id the server no longer knows: AWS and moto say NoSuchUpload; RGW 16 answers
ListParts of an aborted upload with 404 NoSuchKey."""
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
_REFUSED_BECAUSE = {
    "InvalidAccessKeyId": "the access key id is unknown",
    "SignatureDoesNotMatch": "signature mismatch: wrong secret key",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is invalid",
}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _unquote(etag: str | None) -> str | None:
    """ETags without their quotes, as oss2 reports them, so backends agree."""
    return etag.strip('"') if etag else etag


def _taken(exc: ClientError, if_absent: bool) -> bool:
    """Whether a conditional write failed because the key is taken (412 to `If-None-Match`).
    A write that raced another on the same key (409) is retried."""
    if if_absent and _status(exc) == 412:
        return True
    if _status(exc) == 409 and _code(exc) == "ConditionalRequestConflict":
        raise Retryable("409 conflicting concurrent write") from exc
    return False


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
        message = exc.response.get("Error", {}).get("Message", "") or ""
        return service_error(
            _code(exc),
            _status(exc),
            str(message),
            bucket=bucket,
            what=what,
            credential_codes=_CREDENTIAL_CODES,
            not_found_codes=_NOT_FOUND_CODES,
        )
    if isinstance(exc, TransferError):
        return StoreError(str(exc))
    return StoreError(f"{what}: {describe_error(exc)}")


def problem(exc: BaseException) -> tuple[str, str] | None:
    """What an S3 failure says about the store as a whole (see `RemoteStore.check`)."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return NO_CREDENTIALS, str(exc)
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        # botocore wraps a reset connection (which S3 endpoints do under load) the same way
        inner = exc.kwargs.get("error")
        if inner is not None and is_transient_error(inner):
            return None
        return UNREACHABLE, network_reason(inner if inner is not None else exc)
    if not isinstance(exc, ClientError):
        return None
    code = _code(exc)
    if code == "NoSuchBucket" or _status(exc) == 404:  # a LIST of the bucket found nothing
        return NO_BUCKET, code
    if code in _CREDENTIAL_CODES:
        return REFUSED, f"{code}: {_REFUSED_BECAUSE[code]}"
    if code == "AccessDenied" or _status(exc) == 403:
        return DENIED, code or "403"
    return None


def make_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    max_connections: int = 64,
    addressing: str | None = None,
    ca_bundle: str | None = None,
) -> Any:
    """A boto3 S3 client: explicit credentials if given, else the standard AWS chain.

    `addressing` is botocore's `addressing_style` (path, virtual, auto); without it, path-style
    whenever an endpoint is given (most S3-compatible servers know no bucket host names).
    `ca_bundle` replaces the trusted CAs (None: botocore's own, which reads AWS_CA_BUNDLE)."""
    session = boto3.session.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
    )
    region = region or session.region_name or ("us-east-1" if endpoint_url else None)
    style = addressing or ("path" if endpoint_url else None)
    config = botocore.config.Config(
        region_name=region,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": style} if style else {},  # type: ignore[arg-type]  # one of S3_ADDRESSING
        max_pool_connections=max_connections,
        retries={"total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config, verify=ca_bundle)


def _archived(storage_class: str, archive_status: str | None) -> bool:
    """GLACIER and DEEP_ARCHIVE, and INTELLIGENT_TIERING's opt-in archive tiers."""
    return storage_class in S3_ARCHIVE or archive_status in (
        "ARCHIVE_ACCESS",
        "DEEP_ARCHIVE_ACCESS",
    )


def body_checksum(data: bytes, integrity: Integrity) -> dict[str, str]:
    """The boto3 argument that makes the server check `data` as it arrives."""
    if integrity == "sha256":
        return {"ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode()}
    return {}  # boto3 signs the payload's SHA-256 (x-amz-content-sha256) instead


def multipart_etag(parts: list[Part]) -> str | None:
    """The ETag S3 gives an object completed from `parts`: the MD5 of their binary MD5s, then
    `-count` (None when a part's ETag is not an MD5, as under SSE-KMS)."""
    try:
        digests = b"".join(bytes.fromhex(_unquote(p.etag) or "") for p in parts)
    except ValueError:
        return None
    if len(digests) != 16 * len(parts):
        return None
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"


class _Body(StoreBody):
    """An S3 GET body as a `Readable` that raises StoreError, not botocore's errors."""

    def read(self, n: int = -1, /) -> bytes:
        try:
            return bytes(self._raw.read(None if n is None or n < 0 else n))
        except (BotoCoreError, ClientError, OSError) as exc:
            raise store_error(exc, self._bucket, self._what) from exc


S3 = Provider(
    scheme="s3",
    name="S3",
    errors=(BotoCoreError, ClientError),
    is_transient=is_transient,
    store_error=store_error,
    body=_Body,
    initiate_op="CreateMultipartUpload",
    problem=problem,
    credentials_hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
)


class S3Store(RemoteStore):
    """`s3://bucket/prefix` (see ObjectStore for the contract)."""

    provider = S3
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
        addressing: str | None = None,
        ca_bundle: str | None = None,
        checksums: Integrity | None = None,
    ) -> None:
        super().__init__(bucket, prefix, retry=retry, part_size=part_size, parallel=parallel)
        self.endpoint_url = endpoint_url
        self.checksums = checksums
        """What uploads carry for the server to check; None: what the probe found it checks."""
        self.client = client or make_client(
            endpoint_url=endpoint_url,
            region=region,
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
            max_connections=max(64, 4 * self.parallel),
            addressing=addressing,
            ca_bundle=ca_bundle,
        )

    @property
    def bucket(self) -> str:
        return self.bucket_name

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def endpoint_shown(self) -> str:
        return str(self.client.meta.endpoint_url)

    def presign(self, key: str, *, expires: int = 900, filename: str | None = None) -> str | None:
        """See `Presigning`: boto3 signs locally (SigV4 query string)."""
        params = {"Bucket": self.bucket, "Key": self._name(key)}
        if filename is not None:
            params["ResponseContentDisposition"] = attachment(filename)
        return str(
            self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)
        )

    # -- boto3 calls (RemoteStore hooks) ---------------------------------------------------

    def _head_object(self, name: str) -> ObjectInfo | None:
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                return None
            raise
        storage_class = r.get("StorageClass") or "STANDARD"  # S3 omits the header for it
        return ObjectInfo(
            key=name,
            size=int(r["ContentLength"]),
            modified=r.get("LastModified"),
            etag=_unquote(r.get("ETag")),
            storage_class=storage_class,
            archived=_archived(storage_class, r.get("ArchiveStatus")),
            restore=parse_restore(r.get("Restore")),
        )

    def _get_object(self, name: str, span: Span | None) -> Any:
        byte_range = {}
        if span is not None:
            start, last = span
            byte_range["Range"] = f"bytes={start}-{'' if last is None else last}"
        return self.client.get_object(Bucket=self.bucket, Key=name, **byte_range)["Body"]

    def _get(self, name: str, span: Span | None) -> bytes:
        body = self._get_object(name, span)
        try:
            return bytes(body.read())
        finally:
            body.close()

    def _open(self, name: str, span: Span | None) -> Any:
        return self._get_object(name, span)

    def _list_page(
        self, prefix: str, token: str | None, limit: int | None = None
    ) -> tuple[list[ObjectInfo], str | None]:
        more = {"ContinuationToken": token} if token else {}
        page = self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=prefix, MaxKeys=limit or self.page_size, **more
        )
        items = [
            ObjectInfo(
                key=item["Key"],
                size=int(item["Size"]),
                modified=item.get("LastModified"),
                etag=_unquote(item.get("ETag")),
                storage_class=item.get("StorageClass") or "STANDARD",
                archived=_archived(item.get("StorageClass") or "STANDARD", None),
            )
            for item in page.get("Contents", [])
        ]
        token = page.get("NextContinuationToken")
        return items, token if page.get("IsTruncated") and token else None

    def _delete_object(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=name)

    def _traits(self) -> ServerTraits:
        return traits_of(self.client, self.bucket, self.prefix)

    def _integrity(self) -> Integrity:
        return self.checksums or self._traits().integrity

    def _write(
        self,
        call: Callable[..., Any],
        *,
        if_absent: bool,
        honoured: bool,
        expected_etag: str | None = None,
        **args: Any,
    ) -> bool:
        """A write that creates the object (PutObject, CompleteMultipartUpload), made
        conditional by `If-None-Match: *` when `if_absent`; False when the key was taken.
        Where the server ignores the condition (`honoured` False), HEADs keep the promise."""
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        if if_absent and not honoured:
            return self._write_checked(call, expected_etag=expected_etag, **args, **extra)
        try:
            call(Bucket=self.bucket, **args, **extra)
        except ClientError as exc:
            if _taken(exc, if_absent):
                return False
            raise
        return True

    def _write_checked(
        self,
        call: Callable[..., Any],
        *,
        Key: str,  # boto3 spells it so; passed through
        expected_etag: str | None = None,
        **args: Any,
    ) -> bool:
        """An if-absent write on a server that ignores `If-None-Match` for it: nothing is
        written over an object seen by a HEAD first, and if a HEAD after shows another ETag
        than ours, a concurrent writer's object replaced ours and the key counts as taken.
        The window between the first HEAD and the write is documented in s3_probe.py.
        `expected_etag` stands in where the answer has none (RGW's completions)."""
        if self._head_object(Key) is not None:
            return False
        try:
            r = call(Bucket=self.bucket, Key=Key, **args)
        except ClientError as exc:
            if _taken(exc, True):
                return False
            raise
        ours = _unquote(r.get("ETag")) or expected_etag
        after = self._head_object(Key)
        return after is None or ours is None or after.etag == ours

    def _put_object(self, name: str, data: bytes, *, if_absent: bool) -> bool:
        honoured = not if_absent or self._traits().conditional_put
        return self._write(
            self.client.put_object,
            if_absent=if_absent,
            honoured=honoured,
            Key=name,
            Body=data,
            **body_checksum(data, self._integrity()),
            **self._class_arg(),
        )

    def _class_arg(self) -> dict[str, str]:
        return {"StorageClass": self.storage_class} if self.storage_class else {}

    def _initiate(self, name: str) -> str:
        composite = {"ChecksumAlgorithm": "SHA256"} if self._integrity() == "sha256" else {}
        r = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=name, **composite, **self._class_arg()
        )
        return str(r["UploadId"])

    def _restore_object(self, name: str, days: int, tier: str, storage_class: str) -> None:
        request = {"Days": days, "GlacierJobParameters": {"Tier": tier}}
        if storage_class == "INTELLIGENT_TIERING":
            request = {}  # its archive tiers take neither (S3 RestoreObject docs)
        try:
            self.client.restore_object(Bucket=self.bucket, Key=name, RestoreRequest=request)
        except ClientError as exc:
            if _code(exc) != "RestoreAlreadyInProgress":
                raise

    def _upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Part:
        check = body_checksum(data, self._integrity())
        r = self.client.upload_part(
            Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data, **check
        )
        return Part(number, str(r["ETag"]), len(data), checksum=check.get("ChecksumSHA256"))

    def _copy_part(self, name: str, upload_id: str, number: int, source: str, span: Span) -> Part:
        start, last = span
        r = self.client.upload_part_copy(
            Bucket=self.bucket,
            Key=name,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": source},
            CopySourceRange=f"bytes={start}-{last}",
        )
        result = r["CopyPartResult"]
        # On an upload that declared SHA256, the server reports the copied part's own.
        assert last is not None  # a copied range is always closed
        size = last - start + 1
        return Part(number, str(result["ETag"]), size, checksum=result.get("ChecksumSHA256"))

    def _complete(self, name: str, upload_id: str, parts: list[Part], *, if_absent: bool) -> bool:
        body = {
            "Parts": [
                {"PartNumber": p.number, "ETag": p.etag}
                | ({"ChecksumSHA256": p.checksum} if p.checksum else {})
                for p in parts
            ]
        }
        return self._write(
            self.client.complete_multipart_upload,
            if_absent=if_absent,
            honoured=not if_absent or self._traits().conditional_complete,
            expected_etag=multipart_etag(parts),
            Key=name,
            UploadId=upload_id,
            MultipartUpload=body,
        )

    def _no_such_upload(self, exc: BaseException) -> bool:
        return isinstance(exc, ClientError) and _code(exc) in _UPLOAD_GONE_CODES

    def _abort(self, name: str, upload_id: str) -> bool:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
        except ClientError as exc:
            if self._no_such_upload(exc):
                return False
            raise
        return True

    def _parts_left(self, name: str, upload_id: str) -> bool:
        try:
            r = self.client.list_parts(Bucket=self.bucket, Key=name, UploadId=upload_id)
        except ClientError as exc:
            if self._no_such_upload(exc):
                return False
            raise
        return bool(r.get("Parts"))

    def _list_uploads_page(
        self, prefix: str, key_marker: str, upload_marker: str
    ) -> tuple[list[MultipartUpload], tuple[str, str] | None]:
        more = {"KeyMarker": key_marker, "UploadIdMarker": upload_marker} if key_marker else {}
        page = self.client.list_multipart_uploads(
            Bucket=self.bucket, Prefix=prefix, MaxUploads=self.page_size, **more
        )
        uploads = [
            MultipartUpload(
                key=item["Key"], upload_id=item["UploadId"], initiated=item.get("Initiated")
            )
            for item in page.get("Uploads", [])
        ]
        key_marker = page.get("NextKeyMarker", "")
        if not page.get("IsTruncated") or not key_marker:
            return uploads, None
        return uploads, (key_marker, page.get("NextUploadIdMarker", ""))
