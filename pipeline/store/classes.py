"""Storage classes, by provider: which names a store has, which of them are archive classes
(read only after a restore), and what a restore (thaw) reports.

Names are the providers' own (S3 `STANDARD_IA`, OSS `IA`), matched without regard to case and
returned as the provider spells them. A class a store does not have is a UsageError raised
before anything is written (`check_storage_class`), so the CLI can validate its options first.
The local store has one class: it takes `STANDARD` (any case, or OSS's `Standard`) and refuses
every other name rather than pretend to keep bytes cold.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pipeline.errors import UnknownStorageClass

S3_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
)
S3_ARCHIVE = frozenset({"GLACIER", "DEEP_ARCHIVE"})
"""Read (GET, or as an UploadPartCopy source) only after RestoreObject; GLACIER_IR reads at
once."""

OSS_CLASSES = ("Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive")
OSS_ARCHIVE = frozenset({"Archive", "ColdArchive", "DeepColdArchive"})

LOCAL_CLASSES = ("STANDARD",)

CLASSES = {"s3": S3_CLASSES, "oss": OSS_CLASSES, "file": LOCAL_CLASSES}
ARCHIVE = {"s3": S3_ARCHIVE, "oss": OSS_ARCHIVE, "file": frozenset[str]()}
STANDARD = {"s3": "STANDARD", "oss": "Standard", "file": "STANDARD"}

TIERS = ("Expedited", "Standard", "Bulk")
"""Restore speeds, both providers (OSS uses them for ColdArchive and DeepColdArchive; an
Archive object restores at one speed and the tier is not sent)."""


RESTORE_TIME: dict[str, dict[str, str]] = {
    "GLACIER": {"Expedited": "1-5 minutes", "Standard": "3-5 hours", "Bulk": "5-12 hours"},
    "DEEP_ARCHIVE": {"Standard": "within 12 hours", "Bulk": "within 48 hours"},
    "INTELLIGENT_TIERING": {"Standard": "3-5 hours (12 hours from Deep Archive Access)"},
    "Archive": {
        "Expedited": "about 1 minute",
        "Standard": "about 1 minute",
        "Bulk": "about 1 minute",
    },
    "ColdArchive": {"Expedited": "within 1 hour", "Standard": "2-5 hours", "Bulk": "5-12 hours"},
    "DeepColdArchive": {"Expedited": "within 12 hours", "Standard": "within 48 hours"},
}
"""How long a restore takes, per archive class and tier, as the providers document it (AWS
"Restoring an archived object", OSS "Restore objects"): estimates, for telling a user what
to expect, never for waiting on. A tier missing for a class is one the provider does not offer
for it (DEEP_ARCHIVE has no Expedited; OSS Archive restores at one speed, whatever the tier)."""


def restore_time(storage_class: str, tier: str) -> str:
    """The provider's estimate for restoring `storage_class` at `tier`; UnknownStorageClass
    when the provider offers no such tier for that class."""
    tiers = RESTORE_TIME.get(storage_class)
    if tiers is None:
        return "unknown"
    tier = check_tier(tier)
    if tier not in tiers:
        raise UnknownStorageClass(
            f"restore tier {tier} is not offered for {storage_class} (it offers {', '.join(tiers)})"
        )
    return tiers[tier]


def check_storage_class(scheme: str, name: str) -> str:
    """`name` as the store of `scheme` (`s3`, `oss`, `file`) spells it; UnknownStorageClass
    (exit 2) naming the store's classes when it has no such class."""
    known = CLASSES[scheme]
    for candidate in known:
        if candidate.lower() == name.lower():
            return candidate
    if scheme == "file" and name.lower() == "standard":
        return "STANDARD"
    where = {"s3": "S3", "oss": "OSS", "file": "the local store"}[scheme]
    raise UnknownStorageClass(
        f"storage class {name!r} does not exist in {where} (it has {', '.join(known)})"
    )


def check_tier(tier: str) -> str:
    for candidate in TIERS:
        if candidate.lower() == tier.lower():
            return candidate
    raise UnknownStorageClass(f"restore tier {tier!r} is not one of {', '.join(TIERS)}")


class Thaw(enum.Enum):
    """What `ObjectStore.restore` found or did for an object."""

    NOT_NEEDED = "not needed"
    """Not in an archive class (or the server serves it as it is): readable now."""
    IN_PROGRESS = "in progress"
    """A restore is running (requested now or earlier); reads fail until it is done."""
    READY = "ready"
    """A restored copy is readable (until it expires)."""


@dataclass(frozen=True)
class RestoreState:
    """The restore of an archived object, as its HEAD says (`x-amz-restore`, `x-oss-restore`)."""

    ongoing: bool
    expires: str | None = None
    """When the restored copy goes away, as the provider wrote it (an HTTP date)."""


def parse_restore(header: str | None) -> RestoreState | None:
    """`ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"` → its state."""
    if not header:
        return None
    ongoing = 'ongoing-request="true"' in header.replace(" ", "")
    expires = None
    marker = 'expiry-date="'
    if marker in header:
        expires = header.split(marker, 1)[1].split('"', 1)[0]
    return RestoreState(ongoing=ongoing, expires=expires)


MINIMUM_STORAGE_DAYS: dict[str, int] = {
    "STANDARD_IA": 30,
    "ONEZONE_IA": 30,
    "GLACIER_IR": 90,
    "GLACIER": 90,
    "DEEP_ARCHIVE": 180,
    "IA": 30,
    "Archive": 60,
    "ColdArchive": 180,
    "DeepColdArchive": 180,
}
"""Days an object of the class is billed for at least, deleted earlier or not (AWS "Amazon S3
pricing", OSS "Storage fees"): deleting one younger than that costs the remaining days."""
