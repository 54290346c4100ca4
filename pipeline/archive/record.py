"""The per-image record (`images/<repo>/<tag>.json`): what was archived, from where, when.

`bale ls` lists records, `bale verify` checks the tar and blobs a record names, and `bale gc`
marks every blob a record lists as live. A record is written last, after its tar, so one that
exists describes a complete archive. Reading one validates every field again: keys and digests
in it are used to build store keys, so a hand-edited or corrupt record must not reach them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pipeline import __version__
from pipeline.archive import layout
from pipeline.archive.classes import StorageClasses
from pipeline.archive.tarplan import TarPlan
from pipeline.errors import InvalidArchive, InvalidReference
from pipeline.oci import Descriptor, RawManifest, digest_hex
from pipeline.refs import Reference, is_valid_digest, is_valid_repository, is_valid_tag

RECORD_FORMAT = 1
"""Bumped when a field changes meaning; readers refuse formats newer than they know."""

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class BlobEntry:
    """One blob an archived image keeps alive in the store."""

    digest: str
    size: int
    media_type: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "media_type": self.media_type}

    @classmethod
    def from_descriptor(cls, desc: Descriptor) -> BlobEntry:
        return cls(desc.digest, desc.size, desc.media_type)


def format_time(when: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, to the second: `2024-01-01T00:00:00Z`."""
    if when.tzinfo is None:
        raise ValueError("archived_at must be timezone-aware")
    return when.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {text!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone")
    return when.astimezone(UTC)


@dataclass(frozen=True)
class ImageRecord:
    """What one archived image is.

    `digest` is what the reference resolved to at the source (what the store's tag points at,
    an index for a multi-platform image); `tar_digest` is what the tar's index.json points at:
    the same, or the one platform's manifest when only one platform went into the tar.
    `blobs` lists everything the image keeps alive in the store (manifests, configs, layers of
    every stored platform), a superset of what the tar holds.
    """

    source: str
    repo: str
    tag: str | None
    digest: str
    media_type: str
    tar_key: str
    tar_digest: str
    tar_media_type: str
    tar_size: int
    archived_at: datetime
    version: str
    platforms: tuple[str, ...] = ()
    """Platforms in the tar (`os/arch[/variant]`); empty for a lone manifest."""
    stored_platforms: tuple[str, ...] = ()
    """Platforms whose manifests and blobs are in the store's content-addressed area."""
    blobs: tuple[BlobEntry, ...] = field(default=())
    origin: str | None = None
    """What the image was read from when not the registry `source` names (a tar,
    `docker-archive:/abs/x.tar`; another store); absent for a registry."""
    pinned: bool = False
    """`bale pin`: `bale prune` never deletes it, whatever its rules say."""
    storage_class: StorageClasses | None = None
    """Classes its objects were written in (`--storage-class`); absent: the store's default."""
    encryption: dict[str, str] = field(default_factory=dict, hash=False)
    """How the store encrypts the tar (`Encryption.describe()`: the mode, a KMS key id, an
    SSE-C key's MD5, never the key); empty when bale asked for none."""
    lock: dict[str, str] = field(default_factory=dict, hash=False)
    """The tar's write-once protection when written: mode (GOVERNANCE, COMPLIANCE, WORM),
    retain_until, legal_hold; empty on an unprotected store."""

    @property
    def blob_bytes(self) -> int:
        """Total size of the distinct blobs this image keeps alive in the store."""
        return sum(b.size for b in self.blobs)

    @property
    def record_key(self) -> str:
        return layout.record_key_of_tar(self.tar_key)

    @property
    def reference(self) -> Reference:
        return Reference.parse(self.source)

    @property
    def is_history(self) -> bool:
        """A tag's earlier image, kept at `<tag>@sha256-<hex>` when the tag moved on."""
        return self.tar_key != layout.tar_key_for(self.reference)

    def as_history(self) -> ImageRecord:
        """This record as it reads at the tag's history path (its tar there too)."""
        if self.tag is None or self.reference.digest is not None:
            raise ValueError(f"{self.source} is no tag: it has no history")
        return replace(self, tar_key=layout.history_tar_key(self.repo, self.tag, self.digest))

    @classmethod
    def build(
        cls,
        ref: Reference,
        top: RawManifest,
        plan: TarPlan,
        *,
        stored: Iterable[Descriptor] = (),
        stored_platforms: Iterable[str] | None = None,
        archived_at: datetime | None = None,
        version: str = __version__,
        origin: str | None = None,
        storage_class: StorageClasses | None = None,
    ) -> ImageRecord:
        """The record of `ref` archived as `plan`; `stored` adds blobs outside the tar (other
        platforms' manifests and blobs kept in the store)."""
        if plan.root is None:
            raise ValueError("the tar plan has no root manifest")
        blobs: dict[str, BlobEntry] = {}
        for desc in (top.descriptor(), *plan.blobs, *stored):
            blobs.setdefault(desc.digest, BlobEntry.from_descriptor(desc))
        platforms = tuple(plan.platforms)
        return cls(
            source=str(ref),
            repo=ref.store_repo,
            tag=ref.tag,
            digest=top.digest,
            media_type=top.media_type,
            tar_key=layout.tar_key_for(ref),
            tar_digest=plan.root.digest,
            tar_media_type=plan.root.media_type,
            tar_size=plan.total_size,
            archived_at=archived_at or datetime.now(UTC),
            version=version,
            platforms=platforms,
            stored_platforms=tuple(stored_platforms) if stored_platforms is not None else platforms,
            blobs=tuple(blobs.values()),
            origin=origin,
            storage_class=storage_class,
        )

    def to_json(self) -> bytes:
        obj = {
            "format": RECORD_FORMAT,
            "source": self.source,
            "repo": self.repo,
            "tag": self.tag,
            "digest": self.digest,
            "media_type": self.media_type,
            "platforms": list(self.platforms),
            "stored_platforms": list(self.stored_platforms),
            "sizes": {"blobs": self.blob_bytes, "tar": self.tar_size},
            "tar_key": self.tar_key,
            "tar_digest": self.tar_digest,
            "tar_media_type": self.tar_media_type,
            "archived_at": format_time(self.archived_at),
            "version": self.version,
            "blobs": [b.to_json() for b in self.blobs],
        }
        if self.origin is not None:
            obj["origin"] = self.origin
        if self.pinned:
            obj["pinned"] = True
        if self.storage_class is not None:
            obj["storage_class"] = self.storage_class.to_json()
        if self.encryption:
            obj["encryption"] = self.encryption
        if self.lock:
            obj["lock"] = self.lock
        return json.dumps(obj, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, key: str | None = None) -> ImageRecord:
        """Parse and validate a record; `key`, when given, must be where it belongs."""
        where = f"record {key}" if key else "record"
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArchive(f"{where} is not valid JSON") from None
        try:
            record = _from_obj(obj)
        except (KeyError, TypeError, ValueError, InvalidReference) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise InvalidArchive(f"{where} is invalid: {detail}") from None
        if key is not None and record.record_key != key:
            raise InvalidArchive(f"{where} describes {record.tar_key}, not the tar beside it")
        return record


def select_records(records: Iterable[ImageRecord], pattern: str) -> list[ImageRecord]:
    """The records `pattern` names, as `bale ls` filters them.

    `pattern` is a repository, written in full (`127.0.0.1:5000/team/app`) or as its trailing
    path (`team/app`: a shorter name would otherwise mean Docker Hub's), optionally with
    `:TAG` or `@DIGEST` for one image. A pattern that is no reference is a `UsageError`.
    """
    wanted = Reference.parse(pattern, default_tag=None)
    typed = pattern.removeprefix("docker://").split("@", 1)[0]
    if typed.rfind(":") > typed.rfind("/"):
        typed = typed[: typed.rfind(":")]

    def named(record: ImageRecord) -> bool:
        name = record.reference.name
        if name != wanted.name and not name.endswith("/" + typed):
            return False
        if wanted.tag is not None and record.tag != wanted.tag:
            return False
        return wanted.digest is None or wanted.digest in (record.digest, record.tar_digest)

    return [r for r in records if named(r)]


def _str(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty string")
    return value


def _int(obj: dict[str, Any], name: str) -> int:
    value = obj[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{name} must be a non-negative integer")
    return value


def _digest(obj: dict[str, Any], name: str) -> str:
    value = _str(obj, name)
    if not is_valid_digest(value):
        raise ValueError(f"{name} {value!r} is not a digest")
    digest_hex(value)
    return value


def _platforms(obj: dict[str, Any], name: str) -> tuple[str, ...]:
    value = obj.get(name, [])
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"{name} must be a list of strings")
    return tuple(value)


def _from_obj(obj: Any) -> ImageRecord:
    if not isinstance(obj, dict):
        raise TypeError("not a JSON object")
    fmt = obj.get("format", RECORD_FORMAT)
    if not isinstance(fmt, int) or fmt > RECORD_FORMAT:
        raise ValueError(f"format {fmt!r} is newer than this bale understands")
    source = _str(obj, "source")
    repo = _str(obj, "repo")
    if not is_valid_repository(repo):
        raise ValueError(f"repo {repo!r} is not a valid repository")
    ref = Reference.parse(source)
    if ref.store_repo != repo:
        raise ValueError(f"repo {repo!r} does not match source {source!r}")
    tag = obj.get("tag")
    if tag is not None and (not isinstance(tag, str) or not is_valid_tag(tag)):
        raise ValueError(f"tag {tag!r} is not a valid tag")
    if tag != ref.tag:
        raise ValueError(f"tag {tag!r} does not match source {source!r}")
    sizes = obj["sizes"]
    if not isinstance(sizes, dict):
        raise TypeError("sizes must be an object")
    tar_size = _int(sizes, "tar")
    tar_key = _str(obj, "tar_key")
    history = None
    digest = obj.get("digest")  # checked below; a history key is only built from a good one
    if (
        tag is not None
        and ref.digest is None
        and isinstance(digest, str)
        and digest.startswith("sha256:")
        and is_valid_digest(digest)
    ):
        history = layout.history_tar_key(repo, tag, digest)
    if tar_key not in (layout.tar_key_for(ref), history):
        raise ValueError(f"tar key {tar_key!r} is not where {source} is archived")
    blobs_obj = obj.get("blobs", [])
    if not isinstance(blobs_obj, list):
        raise TypeError("blobs must be a list")
    blobs = []
    for item in blobs_obj:
        if not isinstance(item, dict):
            raise TypeError("blobs entries must be objects")
        media_type = item.get("media_type", "")
        if not isinstance(media_type, str):
            raise TypeError("blob media_type must be a string")
        blobs.append(BlobEntry(_digest(item, "digest"), _int(item, "size"), media_type))
    version = obj.get("version", "")
    if not isinstance(version, str):
        raise TypeError("version must be a string")
    origin = obj.get("origin")
    if origin is not None and (not isinstance(origin, str) or not origin):
        raise TypeError("origin must be a non-empty string")
    pinned = obj.get("pinned", False)
    if not isinstance(pinned, bool):
        raise TypeError("pinned must be true or false")
    blob_bytes = sum(b.size for b in blobs)
    if _int(sizes, "blobs") != blob_bytes:
        raise ValueError(
            f"sizes.blobs is {sizes['blobs']}, the blobs listed add up to {blob_bytes}"
        )
    return ImageRecord(
        source=source,
        repo=repo,
        tag=tag,
        digest=_digest(obj, "digest"),
        media_type=_str(obj, "media_type"),
        tar_key=tar_key,
        tar_digest=_digest(obj, "tar_digest"),
        tar_media_type=_str(obj, "tar_media_type"),
        tar_size=tar_size,
        archived_at=parse_time(_str(obj, "archived_at")),
        version=version,
        platforms=_platforms(obj, "platforms"),
        stored_platforms=_platforms(obj, "stored_platforms"),
        blobs=tuple(blobs),
        origin=origin,
        pinned=pinned,
        storage_class=StorageClasses.from_json(obj["storage_class"])
        if "storage_class" in obj
        else None,
        encryption=_strings(obj, "encryption"),
        lock=_strings(obj, "lock"),
    )


def _strings(obj: dict[str, Any], name: str) -> dict[str, str]:
    value = obj.get(name, {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"{name} must be an object of strings")
    return dict(value)
