"""A protocol-level Alibaba Cloud OSS server for tests: real HTTP on loopback, OSS's own XML.

No OSS emulator that exists implements multipart copy (UploadPartCopy), and an S3 server cannot
stand in for OSS: OSS XML has no namespace, errors and headers are `x-oss-*`, create-if-absent is
`x-oss-forbid-overwrite`, and oss2 checks the `x-oss-hash-crc64ecma` header. So this implements
the part of the OSS API that bale uses, the way the OSS documentation and oss2's parser
(`oss2/xml_utils.py`, `oss2/models.py`, `oss2/exceptions.py`) expect it:

    PutObject (x-oss-forbid-overwrite → 409 FileAlreadyExists)   GetObject (Range → 206;
    x-oss-range-behavior: standard → 416 for unsatisfiable ranges, else the whole object)
    HeadObject   DeleteObject   ListObjects (v1, v2 list-type=2; prefix, marker / continuation
    token, max-keys, delimiter, encoding-type=url)   InitiateMultipartUpload   UploadPart
    UploadPartCopy (x-oss-copy-source, x-oss-copy-source-range)   CompleteMultipartUpload
    (part numbers ascending, ETags, parts >= 100 KB but the last, forbid-overwrite)
    AbortMultipartUpload   ListParts   ListMultipartUploads   PutBucket   RestoreObject
    InitiateBucketWorm   CompleteBucketWorm   GetBucketWorm   AbortBucketWorm

Encryption at rest as OSS has it: `x-oss-server-side-encryption` (AES256, KMS, SM4; anything
else 400 InvalidEncryptionAlgorithmError) and `x-oss-server-side-encryption-key-id` on
PutObject and InitiateMultipartUpload are kept with the object and answered on GET and HEAD.
The bytes are kept as they came (nothing here needs them encrypted).

WORM retention policies (`worm`): InitiateBucketWorm starts one InProgress (`x-oss-worm-id`),
CompleteBucketWorm locks it, AbortBucketWorm removes an unlocked one (409
WORMConfigurationLocked once locked), GetBucketWorm answers it (404
NoSuchWORMConfiguration without). While one is InProgress or Locked, an object younger than the
retention period (from its last write) cannot be overwritten (PutObject, the completion of an
upload) or deleted: 409 FileImmutable, OSS's code for it (EC 0026-00000202). Tests move an
object's write time back with `OssServer.age` to see it become deletable.

Storage classes as OSS has them (`x-oss-storage-class` on PutObject and
InitiateMultipartUpload; an unknown name is 400 InvalidArgument): objects in Archive,
ColdArchive and DeepColdArchive answer GET, and serve as an UploadPartCopy source, only once
restored (403 InvalidObjectState before); HEAD shows `x-oss-restore`; RestoreObject answers
202 the first time, 409 RestoreAlreadyInProgress while it runs, 200 once done (and 400
OperationNotSupported for other classes). A restore completes `restore_delay` seconds after
it was asked (`OssServer.restore_delay`, 0 by default: at once).

Every response carries `x-oss-request-id`; objects and parts carry ETags (upper-case MD5, as
OSS does) and `x-oss-hash-crc64ecma`. Signatures are not verified, but the Authorization header
must be present and well formed (V1 `OSS ak:sig` or V4 `OSS4-HMAC-SHA256 Credential=…`), and
the expected access key id and region are checked. Tests can inject faults (`fail`), deny
buckets, and read the request log.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import crcmod

MIN_PART = 100 * 1024
MAX_PARTS = 10_000
STORAGE_CLASSES = ("Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive")
ARCHIVE_CLASSES = frozenset({"Archive", "ColdArchive", "DeepColdArchive"})
RESTORED_DAYS = 86400.0
WORM_EC = "0026-00000202"
"""OSS's error code (`x-oss-ec`) for deleting or modifying an object a retention policy
protects."""

_crc64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)

_V1_AUTH = re.compile(r"^OSS (?P<ak>[^:\s]+):[A-Za-z0-9+/=]+$")
_V4_AUTH = re.compile(
    r"^OSS4-HMAC-SHA256 Credential=(?P<ak>[^/\s]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)"
    r"/oss/aliyun_v4_request(?:, ?AdditionalHeaders=[a-z0-9;-]+)?, ?Signature=[0-9a-f]{64}$"
)
_V4_CREDENTIAL = re.compile(
    r"^(?P<ak>[^/\s]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/oss/aliyun_v4_request$"
)


def crc64(data: bytes) -> int:
    return int(_crc64(data))


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest().upper() + '"'


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


@dataclass
class StoredObject:
    data: bytes
    etag: str
    crc: int
    modified: float
    kind: str = "Normal"
    content_type: str = "application/octet-stream"
    storage_class: str = "Standard"
    restore_ready_at: float | None = None
    """When a restore asked for completes (None: never asked)."""
    restore_days: int = 0
    sse: str | None = None
    sse_key_id: str | None = None

    def restore_header(self, now: float) -> str | None:
        if self.restore_ready_at is None:
            return None
        if now < self.restore_ready_at:
            return 'ongoing-request="true"'
        expiry = _http_date(self.restore_ready_at + self.restore_days * RESTORED_DAYS)
        return f'ongoing-request="false", expiry-date="{expiry}"'

    def frozen(self, now: float) -> bool:
        """In an archive class and not (yet) restored: reads refused."""
        if self.storage_class not in ARCHIVE_CLASSES:
            return False
        return self.restore_ready_at is None or now < self.restore_ready_at


@dataclass
class StoredPart:
    data: bytes
    etag: str
    crc: int
    modified: float


@dataclass
class Upload:
    bucket: str
    key: str
    upload_id: str
    initiated: float
    parts: dict[int, StoredPart] = field(default_factory=dict)
    storage_class: str = "Standard"
    sse: str | None = None
    sse_key_id: str | None = None


@dataclass
class Worm:
    """A bucket's retention policy."""

    worm_id: str
    days: int
    created: float
    state: str = "InProgress"


@dataclass
class Fault:
    """Answer matching requests with an error `times` times (then behave normally)."""

    method: str
    matches: Callable[[str, dict[str, str]], bool]
    status: int = 503
    code: str = "ServiceUnavailable"
    times: int = 1


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    bucket: str
    key: str
    query: dict[str, str]
    status: int
    auth: str
    """`v1`, `v4` or `none`."""
    body_bytes: int
    headers: dict[str, str] = field(default_factory=dict)
    """The request's headers as they arrived (names lower-cased)."""


class OssError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


class OssState:
    """Buckets, objects and uploads, shared by handler threads under one lock."""

    def __init__(self, access_key_id: str | None, region: str | None) -> None:
        self.lock = threading.RLock()
        self.buckets: dict[str, dict[str, StoredObject]] = {}
        self.worms: dict[str, Worm] = {}
        self.uploads: dict[str, Upload] = {}
        self.faults: list[Fault] = []
        self.denied: set[str] = set()
        self.read_only: set[str] = set()
        self.log: list[LoggedRequest] = []
        self.access_key_id = access_key_id
        self.region = region
        self.latency: Callable[[str, str, dict[str, str]], float] | None = None
        """Seconds to hold a request (method, key, query) before answering, for tests."""
        self.active = 0
        self.max_active = 0
        self.restore_delay = 0.0
        """Seconds from RestoreObject to a readable object."""


def _xml(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _add(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = str(text)
    return child


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AliyunOSS"
    sys_version = ""
    state: OssState  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:
        pass

    # -- plumbing ----------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline().strip()
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        content_length: int | None = None,
    ) -> None:
        # Logged and counted as finished before the client can see the answer, so a test that
        # inspects the log right after a call sees the call.
        bucket, key, query, body_bytes = self._request
        with self.state.lock:
            self.state.active -= 1
            sent = {k.lower(): v for k, v in self.headers.items()}
            self.state.log.append(
                LoggedRequest(
                    self.command, bucket, key, query, status, self._auth, body_bytes, sent
                )
            )
        self.send_response(status)
        self.send_header("x-oss-request-id", self._request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header(
                "Content-Length", str(len(body) if content_length is None else content_length)
            )
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, err: OssError) -> None:
        root = ET.Element("Error")
        _add(root, "Code", err.code)
        _add(root, "Message", err.message)
        _add(root, "RequestId", self._request_id)
        _add(root, "HostId", self.headers.get("Host", "127.0.0.1"))
        for tag, text in err.extra.items():
            _add(root, tag, text)
        body = _xml(root)
        headers = {"Content-Type": "application/xml"}
        if "EC" in err.extra:  # OSS's fine-grained code, in the body and a header
            headers["x-oss-ec"] = err.extra["EC"]
        if self.command == "HEAD":
            # HEAD has no body: OSS puts the error document, base64, in x-oss-err.
            headers["x-oss-err"] = base64.b64encode(body).decode()
            self._send(err.status, b"", headers, content_length=0)
        else:
            self._send(err.status, body, headers)

    def _handle(self) -> None:
        self._request_id = uuid.uuid4().hex[:24].upper()
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        segments = split.path.split("/", 2)
        bucket = unquote(segments[1]) if len(segments) > 1 else ""
        key = unquote(segments[2]) if len(segments) > 2 else ""
        body = self._read_body()
        self._request = (bucket, key, query, len(body))
        self._auth = "none"
        with self.state.lock:
            self.state.active += 1
            self.state.max_active = max(self.state.max_active, self.state.active)
        try:
            self._auth = self._check_auth()
            self._check_faults(bucket, key, query)
            latency = self.state.latency
            if latency is not None:
                time.sleep(latency(self.command, key, query))
            self._route(bucket, key, query, body)
        except OssError as err:
            self._send_error(err)
        except Exception as exc:  # a bug in this server: say so rather than hang the client
            self._send_error(OssError(500, "InternalError", f"test server error: {exc!r}"))

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def _check_auth(self) -> str:
        header = self.headers.get("Authorization", "")
        if not header:
            signed = self._check_url_auth()
            if signed is not None:
                return signed
            raise OssError(403, "AccessDenied", "AccessDenied: no Authorization header")
        m = _V1_AUTH.match(header)
        version = "v1"
        if m is None:
            m = _V4_AUTH.match(header)
            version = "v4"
            if m is None:
                raise OssError(400, "InvalidArgument", "Authorization header is invalid.")
            if not self.headers.get("x-oss-date") or not self.headers.get("x-oss-content-sha256"):
                raise OssError(
                    400, "InvalidArgument", "V4 signature needs x-oss-date and x-oss-content-sha256"
                )
            if self.state.region and m.group("region") != self.state.region:
                raise OssError(
                    403,
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match (region)",
                )
        if self.state.access_key_id and m.group("ak") != self.state.access_key_id:
            raise OssError(
                403,
                "InvalidAccessKeyId",
                "The OSS Access Key Id you provided does not exist in our records.",
            )
        return version

    def _check_url_auth(self) -> str | None:
        """A presigned URL (oss2 `Bucket.sign_url`): V1 `OSSAccessKeyId` + `Signature`, V4
        `x-oss-credential` + `x-oss-signature`. As for headers, the key id and region are
        checked and the signature's form, not its value."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        if "OSSAccessKeyId" in query and "Signature" in query:
            ak, version = query["OSSAccessKeyId"], "v1-url"
        elif query.get("x-oss-signature-version") == "OSS4-HMAC-SHA256":
            m = _V4_CREDENTIAL.match(query.get("x-oss-credential", ""))
            if m is None or not re.fullmatch(r"[0-9a-f]{64}", query.get("x-oss-signature", "")):
                raise OssError(400, "InvalidArgument", "presigned URL is invalid.")
            if self.state.region and m.group("region") != self.state.region:
                raise OssError(403, "SignatureDoesNotMatch", "presigned URL region")
            ak, version = m.group("ak"), "v4-url"
        else:
            return None
        if self.state.access_key_id and ak != self.state.access_key_id:
            raise OssError(403, "InvalidAccessKeyId", "The OSS Access Key Id does not exist.")
        return version

    def _check_faults(self, bucket: str, key: str, query: dict[str, str]) -> None:
        with self.state.lock:
            if bucket in self.state.denied or (
                bucket in self.state.read_only and self.command in ("PUT", "POST", "DELETE")
            ):
                raise OssError(403, "AccessDenied", "You have no right to access this object.")
            for fault in self.state.faults:
                if fault.times > 0 and fault.method == self.command and fault.matches(key, query):
                    fault.times -= 1
                    raise OssError(fault.status, fault.code, "injected fault")

    # -- routing -----------------------------------------------------------------------------

    def _route(self, bucket: str, key: str, query: dict[str, str], body: bytes) -> None:
        method = self.command
        if not bucket:
            raise OssError(400, "InvalidArgument", "service operations are not implemented")
        if not key:
            if method == "PUT":
                return self._put_bucket(bucket)
            objects = self._bucket(bucket)
            if "worm" in query or "wormId" in query:
                return self._worm(bucket, method, query, body)
            if method == "GET" and "uploads" in query:
                return self._list_uploads(bucket, query)
            if method == "GET":
                return self._list_objects(bucket, objects, query)
            raise OssError(400, "InvalidArgument", f"bucket operation {method} is not implemented")
        self._bucket(bucket)
        if method == "POST" and "restore" in query:
            return self._restore(bucket, key, body)
        if method == "POST" and "uploads" in query:
            return self._initiate(bucket, key)
        if method == "POST" and "uploadId" in query:
            return self._complete(bucket, key, query["uploadId"], body)
        if method == "PUT" and "uploadId" in query:
            if "x-oss-copy-source" in self.headers:
                return self._upload_part_copy(bucket, key, query)
            return self._upload_part(bucket, key, query, body)
        if method == "DELETE" and "uploadId" in query:
            return self._abort(bucket, key, query["uploadId"])
        if method == "GET" and "uploadId" in query:
            return self._list_parts(bucket, key, query)
        if method == "PUT":
            if "x-oss-copy-source" in self.headers:
                raise OssError(
                    400, "NotImplemented", "CopyObject is not implemented by this server"
                )
            return self._put_object(bucket, key, body)
        if method in ("GET", "HEAD"):
            return self._get_object(bucket, key)
        if method == "DELETE":
            with self.state.lock:
                objects = self._bucket(bucket)
                if key in objects:
                    self._check_mutable(bucket, objects[key])
                objects.pop(key, None)
            return self._send(204)
        raise OssError(400, "InvalidArgument", f"{method} with {sorted(query)} is not implemented")

    def _bucket(self, bucket: str) -> dict[str, StoredObject]:
        with self.state.lock:
            objects = self.state.buckets.get(bucket)
        if objects is None:
            raise OssError(
                404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=bucket
            )
        return objects

    def _storage_class(self) -> str:
        name = self.headers.get("x-oss-storage-class") or "Standard"
        if name not in STORAGE_CLASSES:
            raise OssError(400, "InvalidArgument", f"Invalid storage class {name}.")
        return name

    @staticmethod
    def _check_readable(obj: StoredObject) -> None:
        if obj.frozen(time.time()):
            raise OssError(
                403, "InvalidObjectState", "The operation is not valid for the object's state"
            )

    def _restore(self, bucket: str, key: str, body: bytes) -> None:
        days = 1
        if body:
            try:
                days = int(ET.fromstring(body).findtext("Days") or 1)
            except (ET.ParseError, ValueError) as exc:
                raise OssError(
                    400, "MalformedXML", "The XML you provided was not well-formed."
                ) from exc
        now = time.time()
        with self.state.lock:
            obj = self._bucket(bucket).get(key)
            if obj is None:
                raise OssError(404, "NoSuchKey", "The specified key does not exist.", Key=key)
            if obj.storage_class not in ARCHIVE_CLASSES:
                raise OssError(
                    400, "OperationNotSupported", "The operation is not supported for this resource"
                )
            if obj.restore_ready_at is None:
                obj.restore_ready_at = now + self.state.restore_delay
                obj.restore_days = days
                status = 202
            elif now < obj.restore_ready_at:
                raise OssError(
                    409, "RestoreAlreadyInProgress", "The restore operation is in progress."
                )
            else:
                obj.restore_days = days
                status = 200
        self._send(status)

    def _encryption(self) -> tuple[str | None, str | None]:
        """The `x-oss-server-side-encryption` asked for (and its KMS key id)."""
        sse = self.headers.get("x-oss-server-side-encryption")
        if sse is not None and sse not in ("AES256", "KMS", "SM4"):
            raise OssError(
                400,
                "InvalidEncryptionAlgorithmError",
                "The Encryption request you specified is not valid. Supported value: "
                "AES256/KMS/SM4",
            )
        key_id = self.headers.get("x-oss-server-side-encryption-key-id")
        return sse, (key_id if sse == "KMS" else None)

    @staticmethod
    def _encryption_headers(sse: str | None, key_id: str | None) -> dict[str, str]:
        headers = {"x-oss-server-side-encryption": sse} if sse else {}
        if key_id:
            headers["x-oss-server-side-encryption-key-id"] = key_id
        return headers

    def _check_mutable(self, bucket: str, obj: StoredObject) -> None:
        """409 FileImmutable for an object the bucket's WORM policy still protects (lock held)."""
        worm = self.state.worms.get(bucket)
        if worm is None or worm.state not in ("InProgress", "Locked"):
            return
        if time.time() < obj.modified + worm.days * RESTORED_DAYS:
            raise OssError(
                409,
                "FileImmutable",
                "The object is protected by the bucket's retention policy (WORM) and cannot "
                "be deleted or overwritten until its retention period ends.",
                EC=WORM_EC,
            )

    def _worm(self, bucket: str, method: str, query: dict[str, str], body: bytes) -> None:
        with self.state.lock:
            worm = self.state.worms.get(bucket)
            if method == "POST" and "worm" in query:  # InitiateBucketWorm
                try:
                    days = int(ET.fromstring(body).findtext("RetentionPeriodInDays") or 0)
                except (ET.ParseError, ValueError) as exc:
                    raise OssError(
                        400, "MalformedXML", "The XML you provided was not well-formed."
                    ) from exc
                if not 1 <= days <= 25550:
                    raise OssError(400, "InvalidArgument", "RetentionPeriodInDays is invalid.")
                if worm is not None:
                    raise OssError(
                        409, "WORMConfigurationAlreadyExists", "The WORM configuration exists."
                    )
                worm = Worm(uuid.uuid4().hex[:16].upper(), days, time.time())
                self.state.worms[bucket] = worm
                return self._send(200, b"", {"x-oss-worm-id": worm.worm_id})
            if worm is None or ("wormId" in query and query["wormId"] != worm.worm_id):
                raise OssError(
                    404, "NoSuchWORMConfiguration", "The WORM Configuration does not exist."
                )
            if method == "POST":  # CompleteBucketWorm
                worm.state = "Locked"
                return self._send(200)
            if method == "DELETE":  # AbortBucketWorm
                if worm.state == "Locked":
                    raise OssError(
                        409, "WORMConfigurationLocked", "The WORM Configuration is locked."
                    )
                del self.state.worms[bucket]
                return self._send(204)
            root = ET.Element("WormConfiguration")
            _add(root, "WormId", worm.worm_id)
            _add(root, "State", worm.state)
            _add(root, "RetentionPeriodInDays", worm.days)
            _add(root, "CreationDate", _iso(worm.created))
        self._send(200, _xml(root), {"Content-Type": "application/xml"})

    def _forbid_overwrite(self) -> bool:
        return self.headers.get("x-oss-forbid-overwrite", "").lower() == "true"

    # -- buckets and objects -----------------------------------------------------------------

    def _put_bucket(self, bucket: str) -> None:
        with self.state.lock:
            self.state.buckets.setdefault(bucket, {})
        self._send(200)

    def _put_object(self, bucket: str, key: str, body: bytes) -> None:
        self._check_md5(body)
        sse, sse_key_id = self._encryption()
        obj = StoredObject(
            data=body,
            etag=_etag(body),
            crc=crc64(body),
            modified=time.time(),
            content_type=self.headers.get("Content-Type", "application/octet-stream"),
            storage_class=self._storage_class(),
            sse=sse,
            sse_key_id=sse_key_id,
        )
        with self.state.lock:
            objects = self._bucket(bucket)
            if self._forbid_overwrite() and key in objects:
                raise OssError(
                    409,
                    "FileAlreadyExists",
                    "The object you specified already exists and can not be overwritten.",
                )
            if key in objects:
                self._check_mutable(bucket, objects[key])
            objects[key] = obj
        headers = {"ETag": obj.etag, "x-oss-hash-crc64ecma": str(obj.crc)}
        self._send(200, b"", headers | self._encryption_headers(sse, sse_key_id))

    def _get_object(self, bucket: str, key: str) -> None:
        with self.state.lock:
            obj = self._bucket(bucket).get(key)
        if obj is None:
            raise OssError(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        if self.command == "GET":
            self._check_readable(obj)
        size = len(obj.data)
        headers = {
            "ETag": obj.etag,
            "Last-Modified": _http_date(obj.modified),
            "Content-Type": obj.content_type,
            "Accept-Ranges": "bytes",
            "x-oss-object-type": obj.kind,
            "x-oss-hash-crc64ecma": str(obj.crc),
            "x-oss-storage-class": obj.storage_class,
        }
        restore = obj.restore_header(time.time())
        if restore is not None:
            headers["x-oss-restore"] = restore
        headers |= self._encryption_headers(obj.sse, obj.sse_key_id)
        span = self._range(self.headers.get("Range"), size)
        if span is None:
            return self._send(200, obj.data, headers)
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(206, obj.data[start : end + 1], headers)

    def _range(self, header: str | None, size: int) -> tuple[int, int] | None:
        """The inclusive byte span a Range header asks for, None for the whole object.

        OSS's legacy behaviour serves the whole object for a range it cannot satisfy;
        `x-oss-range-behavior: standard` makes that a 416, as HTTP says.
        """
        if not header:
            return None
        standard = self.headers.get("x-oss-range-behavior", "").lower() == "standard"
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
        if m is None or (not m.group(1) and not m.group(2)):
            return None
        if m.group(1):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else size - 1
        else:
            start, end = max(0, size - int(m.group(2))), size - 1
        if start >= size or end < start:
            if standard:
                raise OssError(416, "InvalidRange", "The requested range cannot be satisfied.")
            return None
        return start, min(end, size - 1)

    def _list_objects(
        self, bucket: str, objects: dict[str, StoredObject], query: dict[str, str]
    ) -> None:
        v2 = query.get("list-type") == "2"
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        encode = query.get("encoding-type") == "url"
        max_keys = min(int(query.get("max-keys") or 100), 1000)
        if v2:
            token = query.get("continuation-token", "")
            marker = (
                base64.urlsafe_b64decode(token).decode() if token else query.get("start-after", "")
            )
        else:
            marker = query.get("marker", "")

        def enc(text: str) -> str:
            return quote(text, safe="/") if encode else text

        with self.state.lock:
            names = sorted(k for k in objects if k.startswith(prefix) and k > marker)
            snapshot = {k: objects[k] for k in names}
        entries: list[tuple[str, StoredObject | None]] = []
        seen_prefixes: set[str] = set()
        truncated = False
        last = ""
        for name in names:
            if delimiter and delimiter in name[len(prefix) :]:
                common = name[: len(prefix) + name[len(prefix) :].index(delimiter) + len(delimiter)]
                if common in seen_prefixes:
                    last = name
                    continue
                if len(entries) >= max_keys:
                    truncated = True
                    break
                seen_prefixes.add(common)
                entries.append((common, None))
            else:
                if len(entries) >= max_keys:
                    truncated = True
                    break
                entries.append((name, snapshot[name]))
            last = name

        root = ET.Element("ListBucketResult")
        _add(root, "Name", bucket)
        _add(root, "Prefix", enc(prefix))
        if v2:
            if query.get("continuation-token"):
                _add(root, "ContinuationToken", query["continuation-token"])
            if query.get("start-after"):
                _add(root, "StartAfter", enc(query["start-after"]))
        else:
            _add(root, "Marker", enc(marker))
        _add(root, "MaxKeys", max_keys)
        _add(root, "Delimiter", enc(delimiter))
        if encode:
            _add(root, "EncodingType", "url")
        _add(root, "IsTruncated", "true" if truncated else "false")
        if truncated:
            if v2:
                _add(
                    root, "NextContinuationToken", base64.urlsafe_b64encode(last.encode()).decode()
                )
            else:
                _add(root, "NextMarker", enc(last))
        if v2:
            _add(root, "KeyCount", len(entries))
        for name, obj in entries:
            if obj is None:
                _add(_add(root, "CommonPrefixes"), "Prefix", enc(name))
                continue
            node = _add(root, "Contents")
            _add(node, "Key", enc(name))
            _add(node, "LastModified", _iso(obj.modified))
            _add(node, "ETag", obj.etag)
            _add(node, "Type", obj.kind)
            _add(node, "Size", len(obj.data))
            _add(node, "StorageClass", obj.storage_class)
            if not v2 or query.get("fetch-owner") == "true":
                owner = _add(node, "Owner")
                _add(owner, "ID", "1234567890")
                _add(owner, "DisplayName", "1234567890")
        self._send(200, _xml(root), {"Content-Type": "application/xml"})

    # -- multipart ---------------------------------------------------------------------------

    def _upload(self, upload_id: str, bucket: str, key: str) -> Upload:
        upload = self.state.uploads.get(upload_id)
        if upload is None or upload.bucket != bucket or upload.key != key:
            raise OssError(
                404, "NoSuchUpload", "The specified upload does not exist.", UploadId=upload_id
            )
        return upload

    def _initiate(self, bucket: str, key: str) -> None:
        upload_id = uuid.uuid4().hex.upper()
        sse, sse_key_id = self._encryption()
        with self.state.lock:
            self.state.uploads[upload_id] = Upload(
                bucket,
                key,
                upload_id,
                time.time(),
                storage_class=self._storage_class(),
                sse=sse,
                sse_key_id=sse_key_id,
            )
        root = ET.Element("InitiateMultipartUploadResult")
        _add(root, "Bucket", bucket)
        _add(root, "Key", key)
        _add(root, "UploadId", upload_id)
        self._send(200, _xml(root), {"Content-Type": "application/xml"})

    def _part_number(self, query: dict[str, str]) -> int:
        try:
            number = int(query.get("partNumber", ""))
        except ValueError:
            number = 0
        if not 1 <= number <= MAX_PARTS:
            raise OssError(
                400,
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000, inclusive.",
            )
        return number

    def _check_md5(self, body: bytes) -> None:
        """OSS refuses a body whose `Content-MD5` differs (nothing stored). It checks no CRC64
        a client sends: it answers the CRC64 of what it received, the client compares."""
        md5 = self.headers.get("Content-MD5")
        if md5 and base64.b64encode(hashlib.md5(body).digest()).decode() != md5:
            raise OssError(400, "InvalidDigest", "The Content-MD5 you specified is not valid.")

    def _upload_part(self, bucket: str, key: str, query: dict[str, str], body: bytes) -> None:
        number = self._part_number(query)
        self._check_md5(body)
        part = StoredPart(body, _etag(body), crc64(body), time.time())
        with self.state.lock:
            self._upload(query["uploadId"], bucket, key).parts[number] = part
        self._send(200, b"", {"ETag": part.etag, "x-oss-hash-crc64ecma": str(part.crc)})

    def _upload_part_copy(self, bucket: str, key: str, query: dict[str, str]) -> None:
        number = self._part_number(query)
        source = self.headers["x-oss-copy-source"]
        m = re.fullmatch(r"/([^/]+)/(.+)", source)
        if m is None:
            raise OssError(400, "InvalidArgument", "x-oss-copy-source is invalid")
        src_bucket, src_key = unquote(m.group(1)), unquote(m.group(2))
        with self.state.lock:
            self._upload(query["uploadId"], bucket, key)
            src = self._bucket(src_bucket).get(src_key)
        if src is None:
            raise OssError(404, "NoSuchKey", "The specified key does not exist.", Key=src_key)
        self._check_readable(src)
        data = src.data
        spec = self.headers.get("x-oss-copy-source-range")
        if spec:
            r = re.fullmatch(r"bytes=(\d+)-(\d+)", spec.strip())
            if r is None or not int(r.group(1)) <= int(r.group(2)) < len(src.data):
                raise OssError(400, "InvalidArgument", f"x-oss-copy-source-range {spec} is invalid")
            data = src.data[int(r.group(1)) : int(r.group(2)) + 1]
        part = StoredPart(data, _etag(data), crc64(data), time.time())
        with self.state.lock:
            self._upload(query["uploadId"], bucket, key).parts[number] = part
        root = ET.Element("CopyPartResult")
        _add(root, "LastModified", _iso(part.modified))
        _add(root, "ETag", part.etag)
        self._send(
            200,
            _xml(root),
            {
                "Content-Type": "application/xml",
                "ETag": part.etag,
                "x-oss-hash-crc64ecma": str(part.crc),
            },
        )

    def _complete(self, bucket: str, key: str, upload_id: str, body: bytes) -> None:
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise OssError(
                400, "MalformedXML", "The XML you provided was not well-formed."
            ) from exc
        wanted = [
            (int(p.findtext("PartNumber", "0")), (p.findtext("ETag") or "").strip('"').upper())
            for p in root.findall("Part")
        ]
        if not wanted:
            raise OssError(
                400, "InvalidPart", "One or more of the specified parts could not be found."
            )
        numbers = [n for n, _ in wanted]
        if numbers != sorted(set(numbers)):
            raise OssError(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
        with self.state.lock:
            upload = self._upload(upload_id, bucket, key)
            chosen: list[StoredPart] = []
            for number, etag in wanted:
                part = upload.parts.get(number)
                if part is None or part.etag.strip('"') != etag:
                    raise OssError(
                        400,
                        "InvalidPart",
                        "One or more of the specified parts could not be found.",
                        PartNumber=str(number),
                    )
                chosen.append(part)
            for part in chosen[:-1]:
                if len(part.data) < MIN_PART:
                    raise OssError(
                        400,
                        "EntityTooSmall",
                        "Your proposed upload is smaller than the minimum allowed size.",
                    )
            objects = self._bucket(bucket)
            if self._forbid_overwrite() and key in objects:
                raise OssError(
                    409,
                    "FileAlreadyExists",
                    "The object you specified already exists and can not be overwritten.",
                )
            if key in objects:
                self._check_mutable(bucket, objects[key])
            data = b"".join(p.data for p in chosen)
            digest = hashlib.md5(b"".join(bytes.fromhex(p.etag.strip('"')) for p in chosen))
            etag = f'"{digest.hexdigest().upper()}-{len(chosen)}"'
            obj = StoredObject(
                data,
                etag,
                crc64(data),
                time.time(),
                kind="Multipart",
                storage_class=upload.storage_class,
                sse=upload.sse,
                sse_key_id=upload.sse_key_id,
            )
            objects[key] = obj
            del self.state.uploads[upload_id]
        result = ET.Element("CompleteMultipartUploadResult")
        _add(result, "Location", f"http://{self.headers.get('Host', '')}/{bucket}/{quote(key)}")
        _add(result, "Bucket", bucket)
        _add(result, "Key", key)
        _add(result, "ETag", etag)
        self._send(
            200,
            _xml(result),
            {"Content-Type": "application/xml", "ETag": etag, "x-oss-hash-crc64ecma": str(obj.crc)},
        )

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        with self.state.lock:
            self._upload(upload_id, bucket, key)
            del self.state.uploads[upload_id]
        self._send(204)

    def _list_parts(self, bucket: str, key: str, query: dict[str, str]) -> None:
        marker = int(query.get("part-number-marker") or 0)
        max_parts = min(int(query.get("max-parts") or 1000), 1000)
        with self.state.lock:
            upload = self._upload(query["uploadId"], bucket, key)
            numbers = sorted(n for n in upload.parts if n > marker)
            parts = [(n, upload.parts[n]) for n in numbers]
        page, truncated = parts[:max_parts], len(parts) > max_parts
        root = ET.Element("ListPartsResult")
        _add(root, "Bucket", bucket)
        _add(root, "Key", key)
        _add(root, "UploadId", upload.upload_id)
        _add(root, "PartNumberMarker", marker)
        _add(root, "NextPartNumberMarker", page[-1][0] if page else marker)
        _add(root, "MaxParts", max_parts)
        _add(root, "IsTruncated", "true" if truncated else "false")
        for number, part in page:
            node = _add(root, "Part")
            _add(node, "PartNumber", number)
            _add(node, "LastModified", _iso(part.modified))
            _add(node, "ETag", part.etag)
            _add(node, "HashCrc64ecma", part.crc)
            _add(node, "Size", len(part.data))
        self._send(200, _xml(root), {"Content-Type": "application/xml"})

    def _list_uploads(self, bucket: str, query: dict[str, str]) -> None:
        prefix = query.get("prefix", "")
        key_marker = query.get("key-marker", "")
        id_marker = query.get("upload-id-marker", "")
        max_uploads = min(int(query.get("max-uploads") or 1000), 1000)
        encode = query.get("encoding-type") == "url"

        def enc(text: str) -> str:
            return quote(text, safe="/") if encode else text

        with self.state.lock:
            uploads = sorted(
                (
                    u
                    for u in self.state.uploads.values()
                    if u.bucket == bucket and u.key.startswith(prefix)
                ),
                key=lambda u: (u.key, u.initiated, u.upload_id),
            )
        if key_marker:
            uploads = [
                u
                for u in uploads
                if u.key > key_marker
                or (id_marker and u.key == key_marker and u.upload_id > id_marker)
            ]
        page, truncated = uploads[:max_uploads], len(uploads) > max_uploads
        root = ET.Element("ListMultipartUploadsResult")
        _add(root, "Bucket", bucket)
        if encode:
            _add(root, "EncodingType", "url")
        _add(root, "KeyMarker", enc(key_marker))
        _add(root, "UploadIdMarker", id_marker)
        _add(root, "NextKeyMarker", enc(page[-1].key) if truncated else "")
        _add(root, "NextUploadIdMarker", page[-1].upload_id if truncated else "")
        _add(root, "Delimiter", "")
        _add(root, "Prefix", enc(prefix))
        _add(root, "MaxUploads", max_uploads)
        _add(root, "IsTruncated", "true" if truncated else "false")
        for u in page:
            node = _add(root, "Upload")
            _add(node, "Key", enc(u.key))
            _add(node, "UploadId", u.upload_id)
            _add(node, "Initiated", _iso(u.initiated))
        self._send(200, _xml(root), {"Content-Type": "application/xml"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients dropping idle keep-alive connections is normal; anything else is shown.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class OssServer:
    """A running OSS protocol server on 127.0.0.1 (background thread)."""

    def __init__(self, *, access_key_id: str | None = None, region: str | None = None) -> None:
        self.state = OssState(access_key_id, region)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self.port = int(self._httpd.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="oss-server", daemon=True
        )
        self._thread.start()

    @property
    def restore_delay(self) -> float:
        """Seconds from RestoreObject until the object reads (0: at once)."""
        return self.state.restore_delay

    @restore_delay.setter
    def restore_delay(self, seconds: float) -> None:
        self.state.restore_delay = seconds

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"bale-{uuid.uuid4().hex[:12]}"
        with self.state.lock:
            self.state.buckets.setdefault(name, {})
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        with self.state.lock:
            return {k: o.data for k, o in self.state.buckets[bucket].items()}

    def uploads(self, bucket: str) -> list[Upload]:
        with self.state.lock:
            return [u for u in self.state.uploads.values() if u.bucket == bucket]

    def requests(self, bucket: str | None = None) -> list[LoggedRequest]:
        with self.state.lock:
            return [r for r in self.state.log if bucket is None or r.bucket == bucket]

    def fail(
        self,
        method: str,
        matches: Callable[[str, dict[str, str]], bool],
        *,
        status: int = 503,
        code: str = "ServiceUnavailable",
        times: int = 1,
    ) -> Fault:
        fault = Fault(method, matches, status, code, times)
        with self.state.lock:
            self.state.faults.append(fault)
        return fault

    def drop_bucket(self, bucket: str) -> None:
        """Forget a bucket and its uploads (frees a test's memory)."""
        with self.state.lock:
            self.state.buckets.pop(bucket, None)
            for upload_id in [i for i, u in self.state.uploads.items() if u.bucket == bucket]:
                del self.state.uploads[upload_id]
            self.state.log = [r for r in self.state.log if r.bucket != bucket]

    def age(self, bucket: str, key: str, seconds: float) -> None:
        """Move an object's last write `seconds` into the past (a WORM period running out)."""
        with self.state.lock:
            self.state.buckets[bucket][key].modified -= seconds

    def stored(self, bucket: str, key: str) -> StoredObject:
        """The object as the server keeps it (its class, encryption, ...)."""
        with self.state.lock:
            return self.state.buckets[bucket][key]

    def deny(self, bucket: str) -> None:
        with self.state.lock:
            self.state.denied.add(bucket)

    def deny_writes(self, bucket: str) -> None:
        """Answer 403 AccessDenied to every PUT, POST and DELETE in `bucket` (read-only keys)."""
        with self.state.lock:
            self.state.read_only.add(bucket)

    def __enter__(self) -> OssServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
