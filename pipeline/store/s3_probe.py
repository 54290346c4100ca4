"""What an S3-compatible server really does with the requests bale's guarantees rest on.

Servers answer 200 to requests whose conditions they ignore: Ceph RGW 16 honours
`If-None-Match: *` on PutObject (412) but not on CompleteMultipartUpload, which then replaces the
existing object; it also accepts a wrong `x-amz-checksum-sha256` without complaint. An answer does
not tell which, so the first create-if-absent write of a run tries each on a scratch key under the
store's prefix (removed afterwards) and the result is kept per endpoint for the process:

- conditional PutObject: `If-None-Match: *` on an existing key is refused with 412;
- conditional CompleteMultipartUpload: the same on the completion of an upload;
- UploadPartCopy: a ranged copy of an object into an upload's part works;
- checksums: a PutObject with the right `x-amz-checksum-sha256` is accepted, one with a wrong
  value refused; a PutObject with a wrong `Content-MD5` is refused.

The checksum answers choose what uploads carry so the server refuses bytes damaged on the way
(`ServerTraits.integrity`): where the server checks `x-amz-checksum-sha256` (AWS), every upload
sends its SHA-256 (multipart uploads declare SHA256 and send each part's: S3's composite
checksum), which the server also keeps with the object. Elsewhere the guard is the payload hash
boto3 signs into every upload that carries no checksum (SigV4 `x-amz-content-sha256`, over HTTP
and HTTPS alike), which Ceph RGW checks (400 XAmzContentSHA256Mismatch) and moto_server does
not. `Content-MD5` is probed for the record only: where the signed hash is checked it adds
nothing but an MD5 of every byte (and over HTTPS boto3 would drop the signed hash for it).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.store import keys

log = logging.getLogger("bale.store")


@dataclass(frozen=True)
class ServerTraits:
    """The probed behaviour of one endpoint (True where the server keeps the guarantee)."""

    conditional_put: bool
    conditional_complete: bool
    copy_part: bool
    checksum_validated: bool
    checksum_accepted: bool = False
    """A right `x-amz-checksum-sha256` is accepted (False: the server refuses the header)."""
    md5_validated: bool = False
    """A wrong `Content-MD5` is refused."""

    @property
    def integrity(self) -> Integrity:
        """What uploads carry so that the server refuses damaged bytes."""
        if self.checksum_accepted and self.checksum_validated:
            return "sha256"
        return "signature"

    def describe(self) -> str:
        def said(flag: bool, yes: str, no: str) -> str:
            return yes if flag else no

        return ", ".join(
            (
                said(
                    self.conditional_put,
                    "PutObject honours If-None-Match",
                    "PutObject ignores If-None-Match",
                ),
                said(
                    self.conditional_complete,
                    "CompleteMultipartUpload honours If-None-Match",
                    "CompleteMultipartUpload ignores If-None-Match",
                ),
                said(self.copy_part, "UploadPartCopy works", "UploadPartCopy refused"),
                "x-amz-checksum-sha256 "
                + (
                    ("checked" if self.checksum_validated else "not checked")
                    if self.checksum_accepted
                    else "refused"
                ),
                said(self.md5_validated, "Content-MD5 checked", "Content-MD5 not checked"),
            )
        )


Integrity = Literal["sha256", "signature"]

INTEGRITY_SAID = {
    "sha256": "uploads carry their SHA-256 (x-amz-checksum-sha256, per part on multipart "
    "uploads), which the server checks",
    "signature": "the server does not check x-amz-checksum-sha256: uploads are guarded only by "
    "the payload hash in their signature, where the server checks it (Ceph RGW and AWS do, "
    "moto_server does not)",
}

UNPROBED = ServerTraits(
    conditional_put=False, conditional_complete=False, copy_part=True, checksum_validated=False
)
"""What a store assumes when it cannot probe (no write permission on a scratch key, say): no
condition is trusted, so every if-absent write is checked by HEAD."""

_known: dict[str, ServerTraits] = {}
_lock = threading.Lock()


def traits_of(client: Any, bucket: str, prefix: str) -> ServerTraits:
    """The endpoint's traits, probed on first use (once per endpoint and process)."""
    endpoint = str(client.meta.endpoint_url)
    with _lock:
        traits = _known.get(endpoint)
        if traits is None:
            traits = _probe(client, bucket, prefix, endpoint)
            _known[endpoint] = traits
    return traits


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _probe(client: Any, bucket: str, prefix: str, endpoint: str) -> ServerTraits:
    name = keys.join(prefix, f".bale-probe-{uuid.uuid4().hex}")
    try:
        traits = _try_all(client, bucket, name)
    except (BotoCoreError, ClientError) as exc:
        log.info(
            "%s: could not probe the server on a scratch key (%s); if-absent writes are "
            "checked by HEAD before and after",
            endpoint,
            exc,
        )
        log.info("%s: %s", endpoint, INTEGRITY_SAID[UNPROBED.integrity])
        return UNPROBED
    log.info("%s: probed: %s", endpoint, traits.describe())
    log.info("%s: %s", endpoint, INTEGRITY_SAID[traits.integrity])
    checked = [
        op
        for op, kept in (
            ("PutObject", traits.conditional_put),
            ("CompleteMultipartUpload", traits.conditional_complete),
        )
        if not kept
    ]
    if checked:
        log.info(
            "%s: if-absent %s checked by HEAD before and after (a writer of the same key "
            "in between is not seen)",
            endpoint,
            " and ".join(checked),
        )
    return traits


def _refused(call: Any, *statuses: int) -> bool:
    """Whether `call` was refused with one of `statuses` (any other error is raised)."""
    try:
        call()
    except ClientError as exc:
        if _status(exc) in statuses:
            return True
        raise
    return False


def _try_all(client: Any, bucket: str, name: str) -> ServerTraits:
    body = b"bale probe"
    client.put_object(Bucket=bucket, Key=name, Body=body)
    try:
        conditional_put = _refused(
            lambda: client.put_object(Bucket=bucket, Key=name, Body=b"again", IfNoneMatch="*"),
            412,
        )
        copy_part, conditional_complete = _try_multipart(client, bucket, name, len(body))
        right = base64.b64encode(hashlib.sha256(body).digest()).decode()
        checksum_accepted = not _refused(
            lambda: client.put_object(Bucket=bucket, Key=name, Body=body, ChecksumSHA256=right),
            400,
            501,
        )
        wrong = base64.b64encode(hashlib.sha256(b"not the body").digest()).decode()
        checksum_validated = checksum_accepted and _refused(
            lambda: client.put_object(Bucket=bucket, Key=name, Body=body, ChecksumSHA256=wrong),
            400,
        )
        wrong_md5 = base64.b64encode(
            hashlib.md5(b"not the body", usedforsecurity=False).digest()
        ).decode()
        md5_validated = _refused(
            lambda: client.put_object(Bucket=bucket, Key=name, Body=body, ContentMD5=wrong_md5),
            400,
        )
    finally:
        client.delete_object(Bucket=bucket, Key=name)
    return ServerTraits(
        conditional_put,
        conditional_complete,
        copy_part,
        checksum_validated,
        checksum_accepted=checksum_accepted,
        md5_validated=md5_validated,
    )


def _try_multipart(client: Any, bucket: str, name: str, size: int) -> tuple[bool, bool]:
    """(UploadPartCopy works, If-None-Match on completion honoured): one upload of `name`,
    its only part copied from `name` itself, completed conditionally over it."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=name)["UploadId"]
    ids = {"Bucket": bucket, "Key": name, "UploadId": upload_id}
    completed = False
    try:
        try:
            r = client.upload_part_copy(
                **ids,
                PartNumber=1,
                CopySource={"Bucket": bucket, "Key": name},
                CopySourceRange=f"bytes=0-{size - 1}",
            )
            etag, copy_part = r["CopyPartResult"]["ETag"], True
        except ClientError as exc:
            if not (400 <= _status(exc) < 500 or _status(exc) == 501):
                raise
            etag = client.upload_part(**ids, PartNumber=1, Body=b"part")["ETag"]
            copy_part = False
        parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
        conditional = _refused(
            lambda: client.complete_multipart_upload(**ids, MultipartUpload=parts, IfNoneMatch="*"),
            412,
        )
        completed = not conditional
    finally:
        if not completed:
            try:
                client.abort_multipart_upload(**ids)
            except ClientError as exc:
                log.debug("probe upload of %s: abort answered %s", name, exc)
    return copy_part, conditional
