"""The one exception tree of bale.

Every error a user can see is a `BaleError`; its message is one line that names the thing at
fault (image, registry, store key) and never contains a secret. `exit_code` maps the error to
the CLI contract: 2 for bad input (nothing was written), 1 for a runtime failure.

    BaleError
    ├── UsageError (exit 2)          bad input: references, URLs, specs, options, archives
    │   ├── InvalidReference
    │   ├── InvalidStoreURL
    │   ├── InvalidArchive
    │   └── UnknownStorageClass      a storage class (or thaw tier) the store does not have
    ├── RegistryError                the registry answered with an error, or could not be reached
    │   ├── AuthError                401/403, or the token service refused us
    │   └── NotFound                 404 for a manifest, blob or repository
    ├── DigestMismatch               bytes that do not hash to the digest they were asked for
    ├── ManifestError                a manifest we cannot parse, or cannot archive (schema1)
    ├── StoreError                   the object store failed
    │   ├── StoreNotFound            a key that is not there
    │   ├── StoreUnusable (exit 2)   the store cannot be used at all: checked before any image
    │   ├── ObjectFrozen (exit 2)    an object in an archive class, not restored: thaw it first
    │   ├── WrongEncryptionKey (exit 2)  an SSE-C object read without its key, or with another
    │   └── ObjectRetained           Object Lock / WORM refused deleting or overwriting it
    ├── TransferError                a stream broke and could not be resumed
    ├── TagImmutable                 --immutable: the tag is archived with another digest
    ├── CommandTimeout (exit 124)    --command-timeout ran out (timeout(1)'s code)
    └── Interrupted (exit 130/143)   Ctrl-C or SIGTERM cut the work short
"""

from __future__ import annotations

from datetime import datetime


class BaleError(Exception):
    """Base of every error bale reports to a user."""

    exit_code: int = 1


class UsageError(BaleError):
    """Bad input: the command cannot start. Nothing has been written."""

    exit_code = 2


class InvalidReference(UsageError):
    """An image reference that does not parse."""


class InvalidStoreURL(UsageError):
    """A store URL that does not parse or lacks a bucket."""


class InvalidArchive(UsageError):
    """A docker-archive / oci-archive tar that is malformed or unsafe."""


class UnknownStorageClass(UsageError):
    """A storage class (or restore tier) the store does not have; refused before any write."""


class RegistryError(BaleError):
    """A registry error, carrying the registry host and HTTP status where there is one."""

    def __init__(self, message: str, *, registry: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.registry = registry
        self.status = status


class AuthError(RegistryError):
    """The registry or its token service refused our credentials (or lack of them)."""


class NotFound(RegistryError):
    """The registry has no such manifest, blob or repository."""


class DigestMismatch(BaleError):
    """Received bytes do not match the digest they were requested by."""


class ManifestError(BaleError):
    """A manifest that cannot be parsed, or one bale cannot archive."""


class StoreError(BaleError):
    """The object store failed an operation."""


class StoreNotFound(StoreError):
    """The object store has no object at the key."""


class ObjectFrozen(StoreError):
    """An object in an archive storage class (S3 GLACIER/DEEP_ARCHIVE, OSS Archive and colder)
    that cannot be read until a restore (thaw) of it completes. Exit 2: nothing was read or
    written; the remedy is a thaw, not a retry."""

    exit_code = 2

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class WrongEncryptionKey(StoreError):
    """An object encrypted with a customer key (SSE-C) asked for without that key, or with
    another one. Exit 2: the remedy is the right key file, not a retry."""

    exit_code = 2

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class ObjectRetained(StoreError):
    """The bucket refused to delete or overwrite an object under retention (S3 Object Lock,
    legal hold, OSS WORM). gc and prune report it ("retained until X") and go on."""

    def __init__(
        self,
        message: str,
        *,
        key: str = "",
        until: datetime | None = None,
        legal_hold: bool = False,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.until = until
        """When the object becomes deletable, where the store said (None: unknown, or a legal
        hold, which lasts until it is lifted)."""
        self.legal_hold = legal_hold


class StoreUnusable(StoreError):
    """The store cannot be used as the command needs: no such bucket, credentials missing or
    refused, access denied, endpoint unreachable. Found by `ObjectStore.check` before the first
    image, so a run says it once instead of once per image; nothing has been written."""

    exit_code = 2


class TransferError(BaleError):
    """A transfer broke and could not be resumed or retried."""


class TagImmutable(BaleError):
    """`--immutable` (or `immutable: true` in a spec): the tag is already archived with another
    digest, and that image is refused (the rest of the run goes on)."""


class CommandTimeout(BaleError):
    """The whole command ran longer than `--command-timeout` (skopeo's flag). It ends the run
    as a signal does (`pipeline/transfer/cancel.py`), with the exit code of timeout(1)."""

    exit_code = 124

    def __init__(self, seconds: float) -> None:
        super().__init__(f"command timed out after {seconds:g} s (--command-timeout)")
        self.seconds = seconds


class Interrupted(BaleError):
    """The run was cancelled by a signal (`pipeline/transfer/cancel.py`); the exit code is the
    shell's 128 + the signal's number."""

    def __init__(self, message: str, *, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
