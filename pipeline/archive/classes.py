"""Which storage class each kind of archive object is written in (`--storage-class`).

Three kinds, because they are read differently: layer `blobs` (the bulk, read only by a
restore), `tars` (read by whoever downloads an image whole), and `small` objects (manifests,
configs, links, records), which every command reads and which therefore stay in the standard
class unless asked otherwise. See docs/lifecycle.md for why a cold blob is written hot first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import UsageError
from pipeline.store.classes import ARCHIVE, STANDARD, check_storage_class

KINDS = ("blobs", "tars", "small")

CONFIG_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    }
)
"""Blobs that count as small objects: every inspect and restore reads them."""


@dataclass(frozen=True)
class StorageClasses:
    """Class per kind; None is the store's default class (S3 STANDARD, OSS the bucket's)."""

    blobs: str | None = None
    tars: str | None = None
    small: str | None = None

    @classmethod
    def parse(cls, text: str) -> StorageClasses:
        """`DEEP_ARCHIVE` (blobs and tars) or `blobs=DEEP_ARCHIVE,tars=GLACIER_IR,small=…`."""
        text = text.strip()
        if not text:
            raise UsageError("--storage-class is empty")
        if "=" not in text:
            return cls(blobs=text, tars=text)
        found: dict[str, str] = {}
        for item in text.split(","):
            kind, _, name = item.partition("=")
            kind, name = kind.strip().lower(), name.strip()
            if kind not in KINDS or not name:
                raise UsageError(
                    f"--storage-class {text!r}: {item!r} is not KIND=CLASS "
                    f"(KIND one of {', '.join(KINDS)})"
                )
            if kind in found:
                raise UsageError(f"--storage-class {text!r} names {kind} twice")
            found[kind] = name
        return cls(**found)

    def checked(self, scheme: str) -> StorageClasses:
        """These classes as the store of `scheme` spells them, small objects in the standard
        class unless named; UnknownStorageClass (exit 2) for one the store does not have."""
        named = {k: check_storage_class(scheme, v) if v else None for k, v in self.items()}
        named["small"] = named["small"] or STANDARD[scheme]
        return StorageClasses(**named)

    def items(self) -> list[tuple[str, str | None]]:
        return [(k, getattr(self, k)) for k in KINDS]

    def archived(self, scheme: str) -> list[str]:
        """The kinds written in an archive class (read only after a thaw)."""
        return [k for k, v in self.items() if v is not None and v in ARCHIVE[scheme]]

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in self.items() if v is not None}

    @classmethod
    def from_json(cls, obj: Any) -> StorageClasses:
        if not isinstance(obj, dict) or not all(
            k in KINDS and isinstance(v, str) and v for k, v in obj.items()
        ):
            raise TypeError(f"storage_class must map {', '.join(KINDS)} to class names")
        return cls(**obj)

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.items() if v is not None) or "-"


def store_scheme(url: str) -> str:
    """`s3`, `oss` or `file`: whose class names a store URL takes."""
    from pipeline.store.url import parse_store_url

    return parse_store_url(url).scheme


def is_small(media_type: str) -> bool:
    return media_type in CONFIG_MEDIA_TYPES
