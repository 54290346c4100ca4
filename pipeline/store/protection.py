"""Write-once buckets: what protects a bucket's objects, and what a write asks to keep.

    S3 Object Lock   per object: a mode (GOVERNANCE or COMPLIANCE) and a retain-until date, and
                     a legal hold; a bucket may set a default retention new objects get.
                     Deleting a retained object version is refused (403 AccessDenied);
                     overwriting a key makes a new version and keeps the old one.
    OSS WORM         per bucket: a retention period in days from each object's last write;
                     InProgress (24 h, may still be aborted) or Locked. Overwriting and
                     deleting a protected object are refused (409 FileImmutable).

`ObjectStore.protection()` asks the bucket once (GetObjectLockConfiguration, GetBucketWorm) and
keeps the answer; `head` reports an object's own retention; a delete the bucket refuses is
`ObjectRetained`, with the date the object becomes deletable when known.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pipeline.errors import UsageError

LockMode = Literal["GOVERNANCE", "COMPLIANCE"]
MODES: tuple[LockMode, ...] = ("GOVERNANCE", "COMPLIANCE")


@dataclass(frozen=True)
class Retention:
    """An object's retention: not deletable before `until` (None: a legal hold, or a WORM
    policy whose date is unknown)."""

    mode: str
    """GOVERNANCE, COMPLIANCE (S3) or WORM (OSS)."""
    until: datetime | None = None
    legal_hold: bool = False

    def active(self, now: datetime | None = None) -> bool:
        """Deleting it is refused now."""
        if self.legal_hold:
            return True
        return self.until is None or self.until > (now or datetime.now(UTC))

    def describe(self) -> dict[str, str]:
        said = {"mode": self.mode}
        if self.until is not None:
            said["retain_until"] = self.until.astimezone(UTC).isoformat()
        if self.legal_hold:
            said["legal_hold"] = "ON"
        return said


@dataclass(frozen=True)
class Protection:
    """A bucket's write-once configuration, as probed. `kind` None: none (deletes and
    overwrites are the caller's business)."""

    kind: Literal["object-lock", "worm"] | None = None
    mode: str | None = None
    """The default retention's mode (S3: GOVERNANCE/COMPLIANCE; OSS: WORM), None without one."""
    days: int | None = None
    """The default retention period, in days (S3 `Years` are converted to 365 days each)."""
    state: str | None = None
    """OSS WORM: InProgress or Locked."""

    @property
    def protected(self) -> bool:
        return self.kind is not None

    @property
    def default_retention(self) -> bool:
        """New objects get a retention without asking for one."""
        return self.mode is not None and bool(self.days)

    def retained_until(self, written: datetime | None) -> datetime | None:
        """When an object written at `written` leaves the default retention."""
        if written is None or not self.days:
            return None
        return written + timedelta(days=self.days)

    def describe(self) -> dict[str, str | int]:
        """For records and reports: {} when the bucket is not protected."""
        if self.kind is None:
            return {}
        said: dict[str, str | int] = {"protection": self.kind}
        if self.mode:
            said["mode"] = self.mode
        if self.days:
            said["retention_days"] = self.days
        if self.state:
            said["state"] = self.state
        return said

    def __str__(self) -> str:
        if self.kind is None:
            return "not protected"
        if self.kind == "worm":
            return f"OSS WORM ({self.state}), {self.days} days from each write"
        if self.default_retention:
            return f"S3 Object Lock, default {self.mode} for {self.days} days"
        return "S3 Object Lock, no default retention"


UNPROTECTED = Protection()


@dataclass(frozen=True)
class Lock:
    """What new objects are written with on an S3 Object Lock bucket (`with_lock`): a
    retention until a date, a legal hold, or both."""

    mode: LockMode | None = None
    until: datetime | None = None
    legal_hold: bool = False

    def __post_init__(self) -> None:
        if (self.mode is None) != (self.until is None):
            raise UsageError("a retention needs both its mode and its retain-until date")
        if self.mode is not None and self.mode not in MODES:
            raise UsageError(f"retention mode {self.mode!r}: use GOVERNANCE or COMPLIANCE")
        if self.until is not None and self.until.tzinfo is None:
            raise UsageError("a retain-until date needs its time zone")
        if self.until is not None and self.until <= datetime.now(UTC):
            raise UsageError(f"retain-until {self.until.isoformat()} is in the past")

    @property
    def any(self) -> bool:
        return self.mode is not None or self.legal_hold

    def describe(self) -> dict[str, str]:
        """What a record says objects were written with ({} for no lock)."""
        said: dict[str, str] = {}
        if self.mode is not None and self.until is not None:
            said = {"mode": self.mode, "retain_until": self.until.astimezone(UTC).isoformat()}
        if self.legal_hold:
            said["legal_hold"] = "ON"
        return said

    def s3_args(self) -> dict[str, Any]:
        """The boto3 arguments of PutObject and CreateMultipartUpload."""
        args: dict[str, Any] = {}
        if self.mode is not None and self.until is not None:
            args["ObjectLockMode"] = self.mode
            args["ObjectLockRetainUntilDate"] = self.until
        if self.legal_hold:
            args["ObjectLockLegalHoldStatus"] = "ON"
        return args


NO_LOCK = Lock()


def retain_for(mode: LockMode, period: timedelta, *, legal_hold: bool = False) -> Lock:
    """A lock keeping new objects `period` from now (`--retain 7y`)."""
    return Lock(mode, datetime.now(UTC) + period, legal_hold)
