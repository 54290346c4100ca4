"""Alibaba Cloud OSS stores, through oss2.

OSS is not S3 with another name: its XML has no namespace, create-if-absent is
`x-oss-forbid-overwrite: true` (409 FileAlreadyExists), parts may be as small as 100 KB, and
oss2 checks every upload against the server's CRC64 (`enable_crc`, kept on: CRC64 runs
through crcmod's C extension at several hundred MiB/s). OSS does not check a CRC64 it is sent,
it answers the one of what it received, so the check comes after the write: a part that
differs is sent again (parts are invisible), and a PutObject carries `Content-MD5` too, which
OSS does check (400 InvalidDigest, nothing stored), so damaged bytes never become visible at a
key; if the CRC64 still differs, the object is removed and the write retried. Unsatisfiable ranges are asked to fail
(`x-oss-range-behavior: standard`) rather than silently return the whole object. V4 signing
needs a region: `OSS_REGION`, or the one in an `oss-<region>.aliyuncs.com` endpoint.
Everything but the oss2 calls is shared with S3 in remote.py.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from datetime import UTC, datetime
from typing import Any

import oss2
import oss2.exceptions
import requests

from pipeline.errors import StoreError, TransferError, UsageError
from pipeline.store.base import MultipartUpload, ObjectInfo, attachment
from pipeline.store.classes import OSS_ARCHIVE, parse_restore
from pipeline.store.encryption import NONE, Encryption
from pipeline.store.multipart import (
    DEFAULT_PARALLEL,
    DEFAULT_PART_SIZE,
    OSS_LIMITS,
    Part,
    PartLimits,
)
from pipeline.store.protection import UNPROTECTED, Lock, Protection, Retention
from pipeline.store.remote import (
    DENIED,
    NO_BUCKET,
    REFUSED,
    UNREACHABLE,
    Provider,
    RemoteStore,
    Span,
    StoreBody,
    network_reason,
    service_error,
)
from pipeline.transfer.retry import (
    RETRYABLE_STATUS,
    Retryable,
    RetryPolicy,
    describe_error,
    is_transient_error,
)

log = logging.getLogger("bale.store")

FORBID_OVERWRITE = {"x-oss-forbid-overwrite": "true"}
IMMUTABLE = ("FileImmutable", "0026-00000202")
"""409 to a delete or overwrite of an object a bucket's WORM retention protects: its error code,
and OSS's fine-grained one (`x-oss-ec`, documented for this refusal), either recognised."""
WORM_PROTECTS = ("InProgress", "Locked")
"""WORM states in which objects are protected: InProgress for its first 24 h (it can still be
aborted then), Locked for good; a policy never locked expires."""
STANDARD_RANGE = {"x-oss-range-behavior": "standard"}

_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "InvalidDigest",  # our Content-MD5 is right: the body was damaged on the way
    }
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


def region_from_endpoint(endpoint: str) -> str | None:
    """`cn-hangzhou` from `https://oss-cn-hangzhou.aliyuncs.com` (None for other endpoints)."""
    m = _ENDPOINT_REGION.search(endpoint)
    return m.group(1) if m else None


def _taken(exc: oss2.exceptions.ServerError, if_absent: bool) -> bool:
    """Whether `x-oss-forbid-overwrite` refused the write because the key is taken."""
    return if_absent and exc.status == 409 and exc.code == "FileAlreadyExists"


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
        return service_error(
            exc.code,
            exc.status,
            exc.message or "",
            bucket=bucket,
            what=what,
            credential_codes=_CREDENTIAL_CODES,
        )
    return StoreError(f"{what}: {describe_error(exc)}")


def problem(exc: BaseException) -> tuple[str, str] | None:
    """What an OSS failure says about the store as a whole (see `RemoteStore.check`)."""
    if isinstance(exc, oss2.exceptions.RequestError):
        cause = getattr(exc, "exception", None)
        if isinstance(cause, requests.exceptions.ConnectionError):
            return UNREACHABLE, network_reason(cause)
        return None
    if not isinstance(exc, oss2.exceptions.ServerError):
        return None
    if exc.code == "NoSuchBucket" or exc.status == 404:  # a LIST of the bucket found nothing
        return NO_BUCKET, exc.code
    if exc.code in _CREDENTIAL_CODES:
        return REFUSED, exc.code
    if exc.code == "AccessDenied" or exc.status == 403:
        return DENIED, exc.code or "403"
    return None


def _when(unix: int | None) -> datetime | None:
    return datetime.fromtimestamp(unix, UTC) if unix is not None else None


class _Body(StoreBody):
    """An OSS GET body as a `Readable` that raises StoreError, not oss2's errors."""

    def read(self, n: int = -1, /) -> bytes:
        try:
            if n is None or n < 0:
                return bytes(self._raw.read())
            return bytes(self._raw.read(n)) if n else b""
        except (oss2.exceptions.OssError, OSError) as exc:
            raise store_error(exc, self._bucket, self._what) from exc
        except Exception as exc:  # requests' own errors while streaming the body
            if is_transient_error(exc):
                raise StoreError(f"{self._what}: {describe_error(exc)}") from exc
            raise


OSS = Provider(
    scheme="oss",
    name="OSS",
    errors=(oss2.exceptions.OssError,),
    is_transient=is_transient,
    store_error=store_error,
    body=_Body,
    initiate_op="InitiateMultipartUpload",
    problem=problem,
    credentials_hint="set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET",
)


class OSSStore(RemoteStore):
    """`oss://bucket/prefix` (see ObjectStore for the contract)."""

    provider = OSS
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
        encryption: Encryption = NONE,
    ) -> None:
        if bucket and not endpoint:  # a missing bucket is reported first, by RemoteStore
            raise StoreError("OSS store needs an endpoint")
        super().__init__(
            bucket,
            prefix,
            retry=retry,
            part_size=part_size,
            parallel=parallel,
            encryption=encryption,
        )
        self.endpoint = endpoint
        self.region = region or region_from_endpoint(endpoint)
        self.anonymous = not access_key_id
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

    def __repr__(self) -> str:
        return f"OSSStore({self.url!r}, endpoint={self.endpoint!r})"

    @property
    def endpoint_shown(self) -> str:
        return self.endpoint

    def _unusable(self, kind: str, detail: str, *, writing: bool) -> str:
        if self.anonymous and kind in (DENIED, REFUSED):
            return (
                f"{self.url}: OSS endpoint {self.endpoint} given without keys "
                f"({self.provider.credentials_hint})"
            )
        return super()._unusable(kind, detail, writing=writing)

    # -- oss2 calls (RemoteStore hooks) ----------------------------------------------------

    def presign(self, key: str, *, expires: int = 900, filename: str | None = None) -> str | None:
        """See `Presigning`: oss2 signs locally (V4 when the store has a region)."""
        params = {"response-content-disposition": attachment(filename)} if filename else None
        return str(
            self.bucket.sign_url("GET", self._name(key), expires, params=params, slash_safe=True)
        )

    def _head_object(self, name: str) -> ObjectInfo | None:
        try:
            r = self.bucket.head_object(name)
        except oss2.exceptions.NotFound as exc:
            if exc.code == "NoSuchBucket":
                raise
            return None
        storage_class = r.headers.get("x-oss-storage-class") or "Standard"
        modified = _when(r.last_modified)
        return ObjectInfo(
            key=name,
            size=int(r.content_length),
            modified=modified,
            etag=r.etag,
            storage_class=storage_class,
            archived=storage_class in OSS_ARCHIVE,
            restore=parse_restore(r.headers.get("x-oss-restore")),
            retention=self._worm_retention(modified),
            encryption=r.headers.get("x-oss-server-side-encryption"),
        )

    def _worm_retention(self, modified: datetime | None) -> Retention | None:
        """An object's retention under the bucket's WORM policy, once `protection()` asked
        for it (OSS has no retention per object: the period runs from the last write)."""
        known = self._known_protection()
        if known is None or known.kind != "worm":
            return None
        return Retention("WORM", known.retained_until(modified))

    def _refused(self, exc: oss2.exceptions.ServerError, name: str) -> None:
        """A write or delete the bucket's WORM policy refused: ObjectRetained, with the date
        the object is free again (asking the policy once if need be)."""
        if exc.status == 409 and (exc.code in IMMUTABLE or getattr(exc, "ec", "") in IMMUTABLE):
            self.protection()
            raise self._retained(name, self._head_object(name)) from exc

    def _check_lock(self, lock: Lock) -> None:
        if lock.any:
            raise UsageError(
                f"{self.url}: OSS has no retention or legal hold per object; the bucket's "
                "WORM retention policy protects every object in it"
            )

    def _get_protection(self) -> Protection:
        try:
            r = self.bucket.get_bucket_worm()
        except oss2.exceptions.ServerError as exc:
            if exc.code == "NoSuchBucket":
                raise
            if exc.code != "NoSuchWORMConfiguration":
                log.info(
                    "%s: could not ask the bucket's WORM policy (%s); taken as none",
                    self.url,
                    exc.code or exc.status,
                )
            return UNPROTECTED
        state = getattr(r, "state", None) or r.worm_state
        if state not in WORM_PROTECTS:
            return UNPROTECTED
        return Protection("worm", mode="WORM", days=r.retention_period_days, state=state)

    def _get(self, name: str, span: Span | None) -> bytes:
        result = self._open(name, span)
        try:
            data = bytes(result.read())
        finally:
            result.close()
        whole = span is None and result.server_crc is not None
        if whole and result.client_crc != result.server_crc:
            raise oss2.exceptions.InconsistentError("GET CRC64 mismatch", result.request_id)
        return data

    def _open(self, name: str, span: Span | None) -> Any:
        return self.bucket.get_object(name, byte_range=span, headers=STANDARD_RANGE)

    def _list_page(
        self, prefix: str, token: str | None, limit: int | None = None
    ) -> tuple[list[ObjectInfo], str | None]:
        page = self.bucket.list_objects_v2(
            prefix=prefix, continuation_token=token or "", max_keys=limit or self.page_size
        )
        items = [
            ObjectInfo(
                key=item.key,
                size=int(item.size),
                modified=_when(item.last_modified),
                etag=item.etag,
                storage_class=item.storage_class or "Standard",
                archived=(item.storage_class or "Standard") in OSS_ARCHIVE,
            )
            for item in page.object_list
        ]
        token = page.next_continuation_token
        return items, token if page.is_truncated and token else None

    def _delete_object(self, name: str) -> None:
        try:
            self.bucket.delete_object(name)
        except oss2.exceptions.ServerError as exc:
            self._refused(exc, name)
            raise

    def _put_object(self, name: str, data: bytes, *, if_absent: bool) -> bool:
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        headers = {"Content-MD5": base64.b64encode(md5).decode()} | self._write_headers()
        if if_absent:
            headers |= FORBID_OVERWRITE
        try:
            self.bucket.put_object(name, data, headers=headers)
        except oss2.exceptions.InconsistentError:
            # Stored, but not what we sent: it must not stay (an if-absent retry would
            # take it for ours). Removed, then the retry sends the bytes again.
            self.bucket.delete_object(name)
            raise
        except oss2.exceptions.ServerError as exc:
            if _taken(exc, if_absent):
                return False
            self._refused(exc, name)
            raise
        return True

    def _write_headers(self) -> dict[str, str]:
        """Storage class and encryption, for PutObject and InitiateMultipartUpload."""
        return self._class_header() | self.encryption.oss_write_headers()

    def _class_header(self) -> dict[str, str]:
        return {"x-oss-storage-class": self.storage_class} if self.storage_class else {}

    def _initiate(self, name: str) -> str:
        upload = self.bucket.init_multipart_upload(name, headers=self._write_headers() or None)
        return str(upload.upload_id)

    def _restore_object(self, name: str, days: int, tier: str, storage_class: str) -> None:
        # Archive restores at one speed; the colder classes take a tier.
        job = None if storage_class == "Archive" else oss2.models.RestoreJobParameters(tier)
        config = oss2.models.RestoreConfiguration(days, job_parameters=job)
        try:
            self.bucket.restore_object(name, input=config)
        except oss2.exceptions.ServerError as exc:
            if exc.code != "RestoreAlreadyInProgress":
                raise

    def _upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Part:
        # oss2 compares the part's CRC64 with the server's (InconsistentError, retried).
        r = self.bucket.upload_part(name, upload_id, number, data)
        return Part(number, str(r.etag), len(data), crc=r.crc)

    def _copy_part(self, name: str, upload_id: str, number: int, source: str, span: Span) -> Part:
        r = self.bucket.upload_part_copy(self.bucket_name, source, span, name, upload_id, number)
        start, last = span
        assert last is not None  # a copied range is always closed
        return Part(number, str(r.etag), last - start + 1, crc=r.crc)

    def _complete(self, name: str, upload_id: str, parts: list[Part], *, if_absent: bool) -> bool:
        infos = [oss2.models.PartInfo(p.number, p.etag, size=p.size, part_crc=p.crc) for p in parts]
        try:
            self.bucket.complete_multipart_upload(
                name, upload_id, infos, headers=FORBID_OVERWRITE if if_absent else None
            )
        except oss2.exceptions.InconsistentError as exc:
            # The object is complete but its CRC64 is not what we sent: remove it.
            self.bucket.delete_object(name)
            raise StoreError(
                f"{self._where(name)}: CRC64 mismatch after upload; object removed"
            ) from exc
        except oss2.exceptions.ServerError as exc:
            if _taken(exc, if_absent):
                return False
            self._refused(exc, name)
            if exc.status == 409 and exc.code != "FileAlreadyExists":
                raise Retryable(f"409 {exc.code}") from exc
            raise
        return True

    def _no_such_upload(self, exc: BaseException) -> bool:
        return isinstance(exc, oss2.exceptions.ServerError) and exc.code == "NoSuchUpload"

    def _abort(self, name: str, upload_id: str) -> bool:
        try:
            self.bucket.abort_multipart_upload(name, upload_id)
        except oss2.exceptions.NoSuchUpload:
            return False
        return True

    def _parts_left(self, name: str, upload_id: str) -> bool:
        try:
            return bool(self.bucket.list_parts(name, upload_id).parts)
        except oss2.exceptions.NoSuchUpload:
            return False

    def _list_uploads_page(
        self, prefix: str, key_marker: str, upload_marker: str
    ) -> tuple[list[MultipartUpload], tuple[str, str] | None]:
        page = self.bucket.list_multipart_uploads(
            prefix=prefix,
            key_marker=key_marker,
            upload_id_marker=upload_marker,
            max_uploads=self.page_size,
        )
        uploads = [
            MultipartUpload(
                key=item.key, upload_id=item.upload_id, initiated=_when(item.initiation_date)
            )
            for item in page.upload_list
        ]
        if not page.is_truncated or not page.next_key_marker:
            return uploads, None
        return uploads, (page.next_key_marker, page.next_upload_id_marker)
