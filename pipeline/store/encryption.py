"""Encryption at rest: one setting per store, applied to every request that needs it.

    S3    AES256            `x-amz-server-side-encryption: AES256` on PutObject and
                            CreateMultipartUpload
          aws:kms [+key]    the same with `aws:kms` and `x-amz-server-side-encryption-aws-kms-key-id`
                            (without a key id, the account's default KMS key)
          SSE-C (key file)  `x-amz-server-side-encryption-customer-{algorithm,key,key-MD5}` on
                            every request that touches an object's bytes: PutObject,
                            CreateMultipartUpload, UploadPart, UploadPartCopy (and its source's
                            `x-amz-copy-source-server-side-encryption-customer-*`), GET, HEAD
    OSS   AES256, KMS [+key] `x-oss-server-side-encryption` (and `-key-id`) on PutObject and
                            InitiateMultipartUpload

The provider encrypts; bale only asks. An SSE-C key is 32 raw bytes read from a file: it is held
in memory only, never shown (`repr`, messages, records): `describe()` gives its MD5, what S3
itself keeps with the object to recognise the key.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import UsageError

Mode = Literal["none", "AES256", "aws:kms", "KMS", "SSE-C"]

MODES: tuple[Mode, ...] = ("AES256", "aws:kms", "KMS", "SSE-C")

SSE_C_KEY_BYTES = 32
"""AES-256: S3 takes exactly 256 bits."""

_MODES: dict[str, tuple[Mode, ...]] = {
    "s3": ("none", "AES256", "aws:kms", "SSE-C"),
    "oss": ("none", "AES256", "KMS"),
    "file": ("none",),
}


@dataclass(frozen=True)
class Encryption:
    """How a store's objects are encrypted at rest. `NONE` asks nothing of the provider (the
    bucket's default encryption, if any, still applies)."""

    mode: Mode = "none"
    kms_key_id: str | None = None
    customer_key: bytes = field(default=b"", repr=False)
    """The SSE-C key's 32 bytes (SSE-C only)."""

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def customer(self) -> bool:
        """SSE-C: every read needs the key too."""
        return self.mode == "SSE-C"

    @property
    def key_md5(self) -> str:
        """Base64 MD5 of the SSE-C key, as S3 sends and keeps it (never the key)."""
        return base64.b64encode(
            hashlib.md5(self.customer_key, usedforsecurity=False).digest()
        ).decode()

    @property
    def key_b64(self) -> str:
        return base64.b64encode(self.customer_key).decode()

    def scrub(self, text: str) -> str:
        """`text` with any spelling of the SSE-C key taken out (an SDK's message may echo the
        parameters it was given)."""
        if not self.customer_key:
            return text
        for secret in (self.key_b64, self.customer_key.hex(), repr(self.customer_key)):
            text = text.replace(secret, "***")
        return text

    def describe(self) -> dict[str, str]:
        """What a record says of the encryption: the mode, the KMS key id, for SSE-C the
        key's MD5. Empty for none."""
        if self.mode == "none":
            return {}
        if self.customer:
            return {"sse": "SSE-C", "sse_c_key_md5": self.key_md5}
        shown: dict[str, str] = {"sse": self.mode}
        if self.kms_key_id:
            shown["kms_key_id"] = self.kms_key_id
        return shown

    def __str__(self) -> str:
        said = self.describe()
        return ", ".join(f"{k}={v}" for k, v in said.items()) or "none"

    def check_for(self, scheme: str) -> Encryption:
        """This setting, refused (exit 2, before anything is contacted) where the store
        cannot do it: SSE on a local directory, SSE-C or `aws:kms` on OSS, `KMS` on S3."""
        allowed = _MODES.get(scheme, ("none",))
        if self.mode not in allowed:
            if scheme == "file":
                raise UsageError(
                    f"encryption {self.mode} is for S3 and OSS stores; a local directory is "
                    "not encrypted by bale (use an encrypted filesystem)"
                )
            raise UsageError(
                f"encryption {self.mode} is not available on {scheme}:// stores: use "
                + ", ".join(m for m in allowed if m != "none")
            )
        return self

    # -- S3 (boto3 arguments) --------------------------------------------------------------

    def s3_write_args(self) -> dict[str, Any]:
        """For PutObject and CreateMultipartUpload."""
        if self.customer:
            return self.s3_key_args()
        if self.mode in ("AES256", "aws:kms"):
            args: dict[str, Any] = {"ServerSideEncryption": self.mode}
            if self.kms_key_id:
                args["SSEKMSKeyId"] = self.kms_key_id
            return args
        return {}

    def s3_key_args(self) -> dict[str, Any]:
        """SSE-C's key for every request on an object's bytes (GET, HEAD, UploadPart, the
        target of UploadPartCopy); nothing for the other modes."""
        if not self.customer:
            return {}
        # Given with its MD5, the key goes as is: base64, as the header carries it.
        return {
            "SSECustomerAlgorithm": "AES256",
            "SSECustomerKey": self.key_b64,
            "SSECustomerKeyMD5": self.key_md5,
        }

    def s3_copy_source_args(self) -> dict[str, Any]:
        """The source's key on UploadPartCopy: sources are this store's own objects."""
        if not self.customer:
            return {}
        return {
            "CopySourceSSECustomerAlgorithm": "AES256",
            "CopySourceSSECustomerKey": self.key_b64,
            "CopySourceSSECustomerKeyMD5": self.key_md5,
        }

    # -- OSS (headers) ---------------------------------------------------------------------

    def oss_write_headers(self) -> dict[str, str]:
        """For PutObject and InitiateMultipartUpload."""
        if self.mode not in ("AES256", "KMS"):
            return {}
        headers: dict[str, str] = {"x-oss-server-side-encryption": self.mode}
        if self.mode == "KMS" and self.kms_key_id:
            headers["x-oss-server-side-encryption-key-id"] = self.kms_key_id
        return headers


NONE = Encryption()


def sse_c_key(path: str | Path) -> bytes:
    """The SSE-C key in `path`: 32 raw bytes, or their base64 (as `openssl rand -base64 32`
    writes it). Anything else is exit 2, naming the file, never its content."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"SSE-C key file {path}: {exc.strerror or exc}") from None
    if len(raw) == SSE_C_KEY_BYTES:
        return raw
    text = raw.strip()
    try:
        decoded = base64.b64decode(text, validate=True)
    except ValueError:
        decoded = b""
    if len(decoded) == SSE_C_KEY_BYTES:
        return decoded
    raise UsageError(
        f"SSE-C key file {path}: {len(raw)} bytes; a key is {SSE_C_KEY_BYTES} raw bytes "
        f"(or their base64, e.g. from `openssl rand -base64 {SSE_C_KEY_BYTES}`)"
    )


def from_options(
    scheme: str,
    sse: str | None = None,
    *,
    kms_key_id: str | None = None,
    key_file: str | Path | None = None,
) -> Encryption:
    """The setting the options ask for (`--sse`, `--sse-kms-key-id`, `--sse-c-key-file`),
    checked for the store's scheme: exit 2 for what cannot work."""
    if key_file is not None:
        if sse not in (None, "SSE-C"):
            raise UsageError(f"--sse {sse} and an SSE-C key file exclude each other")
        if kms_key_id:
            raise UsageError("a KMS key id is for --sse aws:kms or KMS, not SSE-C")
        chosen = Encryption("SSE-C", customer_key=b"").check_for(scheme)
        return Encryption(chosen.mode, customer_key=sse_c_key(key_file))
    if sse is None or sse.lower() == "none":
        if kms_key_id:
            raise UsageError("a KMS key id needs --sse aws:kms (S3) or KMS (OSS)")
        return NONE
    names: dict[str, Mode] = {m.lower(): m for m in MODES}
    mode = names.get(sse.lower())
    if mode is None:
        raise UsageError(f"unknown encryption {sse!r}: use AES256, aws:kms (S3) or KMS (OSS)")
    if mode == "SSE-C":
        raise UsageError("SSE-C needs its key: give the key file")
    if scheme == "oss" and mode == "aws:kms":
        mode = "KMS"  # one spelling for both, as the user means the same
    if scheme == "s3" and mode == "KMS":
        mode = "aws:kms"
    if kms_key_id and mode == "AES256":
        raise UsageError("a KMS key id needs --sse aws:kms (S3) or KMS (OSS), not AES256")
    return Encryption(mode, kms_key_id=kms_key_id or None).check_for(scheme)
