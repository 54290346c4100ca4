"""What an S3-compatible server really does with the requests bale's guarantees rest on.

Servers answer 200 to requests whose conditions they ignore: Ceph RGW 16 honours
`If-None-Match: *` on PutObject (412) but not on CompleteMultipartUpload, which then replaces the
existing object; it also accepts a wrong `x-amz-checksum-sha256` without complaint. An answer does
not tell which, so the first create-if-absent write of a run tries each on a scratch key under the
store's prefix (removed afterwards) and the result is kept per endpoint for the process:

- conditional PutObject: `If-None-Match: *` on an existing key is refused with 412;
- conditional CompleteMultipartUpload: the same on the completion of an upload;
- UploadPartCopy: a ranged copy of an object into an upload's part works;
- checksum validation: a PutObject with a wrong `x-amz-checksum-sha256` is refused.

Where a condition is ignored, S3Store keeps the promise itself (see `S3Store._write_checked`): a
HEAD before the write (an existing object is never replaced by a writer that saw it) and a HEAD
after it (if another object replaced ours, the key counts as taken). What remains is a window
between the first HEAD and the write, one request long: two writers of the same new key can both
write, and the later one's bytes stay. bale writes such keys if-absent only where both writers'
bytes are the same (content-addressed blobs; a tar or record of one digest), so losing that race
replaces an object by an identical one.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

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
                said(
                    self.checksum_validated,
                    "x-amz-checksum-sha256 checked",
                    "x-amz-checksum-sha256 not checked",
                ),
            )
        )


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
        return UNPROBED
    log.info("%s: probed: %s", endpoint, traits.describe())
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
        wrong = base64.b64encode(hashlib.sha256(b"not the body").digest()).decode()
        checksum_validated = _refused(
            lambda: client.put_object(Bucket=bucket, Key=name, Body=body, ChecksumSHA256=wrong),
            400,
        )
    finally:
        client.delete_object(Bucket=bucket, Key=name)
    return ServerTraits(conditional_put, conditional_complete, copy_part, checksum_validated)


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
