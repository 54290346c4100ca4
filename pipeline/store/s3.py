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
from datetime import UTC, datetime
from typing import Any, cast

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

from pipeline.errors import (
    StoreError,
    StoreUnusable,
    TransferError,
    UsageError,
    WrongEncryptionKey,
)
from pipeline.store.base import MultipartUpload, ObjectInfo, attachment
from pipeline.store.classes import S3_ARCHIVE, parse_restore
from pipeline.store.encryption import NONE, Encryption
from pipeline.store.multipart import (
    DEFAULT_PARALLEL,
    DEFAULT_PART_SIZE,
    S3_LIMITS,
    Part,
    PartLimits,
)
from pipeline.store.protection import UNPROTECTED, Lock, LockMode, Protection, Retention
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
_VERSIONS_DELETED = 100
"""Most versions of one key a delete on an Object Lock bucket removes (bale writes each key
once; more means something else writes there)."""
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


def content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


_LOCK_NEEDS_MD5 = "MissingUploadObjectWithObjectLockHeaders"
"""moto's code for a write to a bucket with a default retention that carries neither
Content-MD5 nor a checksum; AWS says InvalidRequest with a message naming Content-MD5."""

_SSE_C_WORDS = (
    "customer provided key",
    "md5 hash of the key",
    "server side encryption",
    "encryption parameters",
)
"""What S3 and RGW say when an SSE-C object is read without its key or with another (RGW:
400 InvalidArgument "...must provide a valid encryption algorithm" / "The calculated MD5 hash
of the key did not match..."; AWS: 400 InvalidRequest "...stored using a form of Server Side
Encryption...", 403 for another key). A HEAD has no body: its bare 400/403 is all there is."""


def _key_refused(exc: ClientError, customer: bool) -> bool:
    """Whether `exc` says the object's SSE-C key was missing or another."""
    if _status(exc) not in (400, 403):
        return False
    message = str(exc.response.get("Error", {}).get("Message", "") or "").lower()
    if any(words in message for words in _SSE_C_WORDS):
        return True
    bare = _code(exc) in ("400", "403", "BadRequest", "Forbidden")  # a HEAD's answer
    return bare and (customer or _status(exc) == 400)


def _retention_of(r: dict[str, Any]) -> Retention | None:
    """An object's Object Lock state from its HEAD (None without one)."""
    mode = r.get("ObjectLockMode")
    hold = r.get("ObjectLockLegalHoldStatus") == "ON"
    if not mode and not hold:
        return None
    return Retention(mode or "LEGAL_HOLD", r.get("ObjectLockRetainUntilDate"), hold)


def _protection_of(config: dict[str, Any]) -> Protection:
    """GetObjectLockConfiguration's answer as a Protection."""
    if config.get("ObjectLockEnabled") != "Enabled":
        return UNPROTECTED
    default = config.get("Rule", {}).get("DefaultRetention", {})
    days = default.get("Days") or 365 * int(default.get("Years") or 0) or None
    return Protection("object-lock", mode=default.get("Mode"), days=days)


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
        encryption: Encryption = NONE,
    ) -> None:
        super().__init__(
            bucket,
            prefix,
            retry=retry,
            part_size=part_size,
            parallel=parallel,
            encryption=encryption,
        )
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
        """See `Presigning`: boto3 signs locally (SigV4 query string). An SSE-C object cannot
        be read by a URL alone (the key travels in headers), so it is streamed instead."""
        if self.encryption.customer:
            return None
        params = {"Bucket": self.bucket, "Key": self._name(key)}
        if filename is not None:
            params["ResponseContentDisposition"] = attachment(filename)
        return str(
            self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)
        )

    # -- boto3 calls (RemoteStore hooks) ---------------------------------------------------

    def _head_object(self, name: str) -> ObjectInfo | None:
        r = self._head(name)
        return None if r is None else self._info(name, r)

    def _head(self, name: str) -> dict[str, Any] | None:
        """HeadObject's answer, None when there is no object."""
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=name, **self._key()))
        except ClientError as exc:
            if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                return None
            raise

    def _info(self, name: str, r: dict[str, Any]) -> ObjectInfo:
        storage_class = r.get("StorageClass") or "STANDARD"  # S3 omits the header for it
        return ObjectInfo(
            key=name,
            size=int(r["ContentLength"]),
            modified=r.get("LastModified"),
            etag=_unquote(r.get("ETag")),
            storage_class=storage_class,
            archived=_archived(storage_class, r.get("ArchiveStatus")),
            restore=parse_restore(r.get("Restore")),
            retention=_retention_of(r),
            encryption="SSE-C" if r.get("SSECustomerAlgorithm") else r.get("ServerSideEncryption"),
        )

    def _versioned(self) -> bool:
        """An Object Lock bucket (so versioned), as far as `protection()` knows: Ceph RGW 16
        ignores `If-None-Match: *` there (measured: 200, a new version) though it honours it
        elsewhere, so if-absent writes are checked by HEAD on such buckets."""
        known = self._known_protection()
        return known is not None and known.kind == "object-lock"

    def _key(self) -> dict[str, Any]:
        """SSE-C's key arguments for a request on an object's bytes (nothing otherwise)."""
        return self.encryption.s3_key_args()

    def _lock_md5(self, data: bytes) -> dict[str, str]:
        """Content-MD5 where S3 requires it: on writes with an Object Lock retention, asked
        for or the bucket's default (known from `protection()`, or learnt from a refusal)."""
        known = self._known_protection()
        needed = (
            self.lock.any
            or self._bucket_state.get("lock-md5", False)
            or (known is not None and known.default_retention)
        )
        return {"ContentMD5": content_md5(data)} if needed else {}

    def _learn_lock_md5(self, exc: ClientError) -> None:
        """A write refused for want of Content-MD5 on a locked bucket: send it from now on,
        and this write again."""
        message = str(exc.response.get("Error", {}).get("Message", "") or "")
        wants_md5 = _code(exc) == _LOCK_NEEDS_MD5 or (
            _code(exc) == "InvalidRequest" and "Content-MD5" in message
        )
        if wants_md5 and not self._bucket_state.get("lock-md5"):
            self._bucket_state["lock-md5"] = True
            raise Retryable("the bucket's Object Lock needs Content-MD5 on writes") from exc

    def _store_error(self, exc: BaseException, what: str) -> StoreError:
        if isinstance(exc, ClientError) and self.encryption.mode == "aws:kms":
            message = str(exc.response.get("Error", {}).get("Message", "") or "")
            if _status(exc) in (400, 403) and "kms" in message.lower():
                # RGW: no key id (400 InvalidArgument), an unknown one (400 InvalidAccessKeyId,
                # which is not about credentials); AWS: KMS.* codes, AccessDenied to the key.
                return StoreUnusable(
                    f"{what}: the server refused encryption {self.encryption} "
                    f"({_code(exc)}: {message.splitlines()[0][:200]})"
                )
        if isinstance(exc, ClientError) and _key_refused(exc, self.encryption.customer):
            if self.encryption.customer:
                return WrongEncryptionKey(
                    f"{what}: the SSE-C key does not match the one the object was written "
                    f"with ({_code(exc)})",
                    key=what,
                )
            return WrongEncryptionKey(
                f"{what}: encrypted with a customer key (SSE-C) and read without one "
                f"({_code(exc)}): give its key file",
                key=what,
            )
        error = super()._store_error(exc, what)
        shown = self.encryption.scrub(str(error))
        return error if shown == str(error) else StoreError(shown)

    def _get_object(self, name: str, span: Span | None) -> Any:
        byte_range = {}
        if span is not None:
            start, last = span
            byte_range["Range"] = f"bytes={start}-{'' if last is None else last}"
        r = self.client.get_object(Bucket=self.bucket, Key=name, **byte_range, **self._key())
        return r["Body"]

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
        if self.protection().kind != "object-lock":
            self.client.delete_object(Bucket=self.bucket, Key=name)
            return
        # Versions are on: a DELETE without a version only hides the object behind a delete
        # marker, retained or not. Deleting the version itself is what the lock refuses, and
        # what frees the storage; an older version showing up after it is deleted the same way.
        for _ in range(_VERSIONS_DELETED):
            r = self._head(name)
            if r is None:
                return
            version = r.get("VersionId")
            try:
                self.client.delete_object(
                    Bucket=self.bucket, Key=name, **({"VersionId": version} if version else {})
                )
            except ClientError as exc:
                if _status(exc) == 403 and _code(exc) == "AccessDenied":
                    raise self._retained(name, self._info(name, r)) from exc
                raise
            if not version:
                return
        raise StoreError(f"{self._where(name)}: over {_VERSIONS_DELETED} versions to delete")

    def _check_lock(self, lock: Lock) -> None:
        """A lock on a bucket without Object Lock would be refused at every write (400
        InvalidRequest): refused here instead, once, asking the bucket (`protection()`)."""
        if lock.any and self.protection().kind != "object-lock":
            raise UsageError(
                f"{self.url}: the bucket has no Object Lock (it is enabled when a bucket is "
                "created): retention and legal hold cannot be kept there"
            )

    def _get_protection(self) -> Protection:
        try:
            r = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) == "NoSuchBucket":
                raise
            if _code(exc) != "ObjectLockConfigurationNotFoundError":
                log.info(
                    "%s: could not ask the bucket's Object Lock configuration (%s); taken as none",
                    self.url,
                    _code(exc) or _status(exc),
                )
            return UNPROTECTED
        return _protection_of(r.get("ObjectLockConfiguration", {}))

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
        honoured = not if_absent or (self._traits().conditional_put and not self._versioned())
        try:
            return self._write(
                self.client.put_object,
                if_absent=if_absent,
                honoured=honoured,
                Key=name,
                Body=data,
                **body_checksum(data, self._integrity()),
                **self._class_arg(),
                **self.encryption.s3_write_args(),
                **self.lock.s3_args(),
                **self._lock_md5(data),
            )
        except ClientError as exc:
            self._learn_lock_md5(exc)
            raise

    def _class_arg(self) -> dict[str, str]:
        return {"StorageClass": self.storage_class} if self.storage_class else {}

    def _initiate(self, name: str) -> str:
        composite = {"ChecksumAlgorithm": "SHA256"} if self._integrity() == "sha256" else {}
        r = self.client.create_multipart_upload(
            Bucket=self.bucket,
            Key=name,
            **composite,
            **self._class_arg(),
            **self.encryption.s3_write_args(),
            **self.lock.s3_args(),
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
        try:
            r = self.client.upload_part(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                **check,
                **self._key(),
                **self._lock_md5(data),
            )
        except ClientError as exc:
            self._learn_lock_md5(exc)
            raise
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
            **self._key(),
            **self.encryption.s3_copy_source_args(),
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
        written = self._write(
            self.client.complete_multipart_upload,
            if_absent=if_absent,
            honoured=not if_absent
            or (self._traits().conditional_complete and not self._versioned()),
            expected_etag=multipart_etag(parts),
            Key=name,
            UploadId=upload_id,
            MultipartUpload=body,
            # AWS wants an SSE-C upload's key again where the parts carry checksums.
            **(self._key() if self._integrity() == "sha256" else {}),
        )
        known = self._known_protection()
        if written and (self.lock.any or (known is not None and known.default_retention)):
            self._keep_lock(name)
        return written

    def _keep_lock(self, name: str) -> None:
        """Make sure an object completed from a multipart upload carries the lock asked at its
        creation, or the bucket's default retention: Ceph RGW 16 and moto_server drop the one
        and do not apply the other (AWS does both), so what the HEAD does not show is set with
        PutObjectRetention / PutObjectLegalHold on that version."""
        r = self._head(name)
        if r is None:
            return
        held = _retention_of(r)
        version = {"VersionId": r["VersionId"]} if r.get("VersionId") else {}
        lock = self.lock
        known = self._known_protection()
        if lock.mode is None and known is not None and known.default_retention:
            until = known.retained_until(datetime.now(UTC))
            lock = Lock(cast(LockMode, known.mode), until, lock.legal_hold)
        if lock.mode is not None and (held is None or held.until is None):
            self.client.put_object_retention(
                Bucket=self.bucket,
                Key=name,
                Retention={"Mode": lock.mode, "RetainUntilDate": lock.until},
                **version,
            )
        if lock.legal_hold and (held is None or not held.legal_hold):
            self.client.put_object_legal_hold(
                Bucket=self.bucket, Key=name, LegalHold={"Status": "ON"}, **version
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
