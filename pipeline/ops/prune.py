"""`bale prune`: delete archived images that no retention rule keeps.

`plan_prune` is pure: from the store's listing of archived images (one `ArchivedImage` per
record, a tag's earlier digests included) and the rules for each repository it decides what
goes and what stays, and why. `apply_prune` carries a plan out.

An image goes by the reverse of the write order (archive writes tags, then the tar, then the
record): its record first, then its tar, then its tag's history link, then the tag's current
link, and that only while it still points at the image's digest. A crash in between leaves a
tag on a manifest that is still stored (blobs go only through `bale gc`, which marks from tags),
never a tag or record on something missing. Just before its deletion each record is read
again: one pinned, re-archived or removed since the plan is left alone.

Bytes: a tar's bytes are freed by prune itself; blobs only by `gc`, and only those no kept
image lists (a layer shared with a kept image frees nothing), which the plan counts as "bytes
gc will free".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket, ArchivedImage
from pipeline.archive.record import ImageRecord, format_time
from pipeline.errors import ObjectRetained, StoreNotFound, UsageError
from pipeline.retention import Retention
from pipeline.store.base import ObjectInfo, ObjectStore
from pipeline.store.classes import MINIMUM_STORAGE_DAYS

log = logging.getLogger(__name__)

DAY = 86400.0

RulesFor = Callable[[ImageRecord], Retention | None]


@dataclass(frozen=True)
class EarlyDelete:
    """An object deleted before its class's minimum storage duration: billed anyway for the
    days left (`bytes` for `remaining_days`)."""

    key: str
    storage_class: str
    minimum_days: int
    age_days: float
    bytes: int

    @property
    def remaining_days(self) -> float:
        return max(0.0, self.minimum_days - self.age_days)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "storage_class": self.storage_class,
            "minimum_days": self.minimum_days,
            "age_days": round(self.age_days, 2),
            "remaining_days": round(self.remaining_days, 2),
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class Decision:
    image: ArchivedImage
    kept_by: tuple[str, ...]
    """The rules that keep it (`pinned`, `keep-last 5`, `no rule`); empty: it goes."""
    early: tuple[EarlyDelete, ...] = ()
    unlink_tag: bool = False
    """Whether its tag links go too (no kept image has the same tag and digest)."""

    @property
    def deleted(self) -> bool:
        return not self.kept_by

    def to_json(self) -> dict[str, Any]:
        record = self.image.record
        return {
            "action": "delete" if self.deleted else "keep",
            "image": record.source,
            "repo": record.repo,
            "tag": record.tag,
            "digest": record.digest,
            "archived_at": format_time(record.archived_at),
            "pinned": record.pinned,
            "kept_by": list(self.kept_by),
            "record_key": self.image.key,
            "tar_key": record.tar_key,
            "tar_bytes": self.image.tar.size if self.image.tar else 0,
            "storage_class": self.image.tar.storage_class if self.image.tar else None,
            "early_delete": [e.to_json() for e in self.early],
        }


@dataclass
class PrunePlan:
    decisions: list[Decision]
    gc_bytes: int
    """Bytes of blobs that only deleted images list: what a later `gc` frees."""
    now: datetime
    applied: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(record key, why) of images the apply left alone (changed since the plan)."""

    @property
    def deleted(self) -> list[Decision]:
        return [d for d in self.decisions if d.deleted]

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if not d.deleted]

    @property
    def tar_bytes(self) -> int:
        return sum(d.image.tar.size for d in self.deleted if d.image.tar)

    @property
    def early(self) -> list[EarlyDelete]:
        return [e for d in self.deleted for e in d.early]

    def to_json(self, store: str) -> dict[str, Any]:
        """The documented, stable shape (docs/lifecycle.md): keys in this order."""
        return {
            "store": store,
            "applied": self.applied,
            "now": format_time(self.now),
            "images": len(self.decisions),
            "delete": len(self.deleted),
            "keep": len(self.kept),
            "tar_bytes": self.tar_bytes,
            "gc_bytes": self.gc_bytes,
            "early_delete": len(self.early),
            "plan": [d.to_json() for d in self.decisions],
            "skipped": [{"record_key": k, "reason": why} for k, why in self.skipped],
        }


def rules_from(scoped: Sequence[tuple[str, Retention]], default: Retention | None) -> RulesFor:
    """Each image's rule set: the first scope (a repository's full name, or a registry key
    ending in `/`) that names it, else `default` (the command line's); None when nothing
    applies (the image is kept). `batch.spec.retention_scopes` gives a spec's scopes."""

    def rules_for(record: ImageRecord) -> Retention | None:
        name = record.reference.name
        for scope, rules in scoped:
            if name == scope or (scope.endswith("/") and name.startswith(scope)):
                return rules
        return default

    return rules_for


def plan_prune(
    images: Sequence[ArchivedImage], rules_for: RulesFor, *, now: datetime | None = None
) -> PrunePlan:
    """What goes and what stays (pure: no store access). Order: by image name, then newest
    first, so the plan reads like `ls` and is stable for scripts."""
    now = now or datetime.now(UTC)
    ordered = sorted(
        images, key=lambda i: (i.record.source, -i.record.archived_at.timestamp(), i.key)
    )
    rank: dict[str, int] = {}
    seen_in_repo: dict[str, int] = {}
    for image in sorted(images, key=lambda i: (-i.record.archived_at.timestamp(), i.key)):
        repo = image.record.repo
        rank[image.key] = seen_in_repo.get(repo, 0)
        seen_in_repo[repo] = rank[image.key] + 1

    kept_by: dict[str, tuple[str, ...]] = {}
    for image in ordered:
        record = image.record
        rules = rules_for(record)
        reasons: list[str] = []
        if record.pinned:
            reasons.append("pinned")
        if rules is None:
            reasons.append("no rule")
        else:
            reasons += rules.tag_rules(record.tag)
            if rules.keep_last is not None and rank[image.key] < rules.keep_last:
                reasons.append(f"keep-last {rules.keep_last}")
            if rules.keep_within is not None and (
                (now - record.archived_at).total_seconds() <= rules.keep_within
            ):
                reasons.append(f"keep-within {rules.keep_within_text}")
        kept_by[image.key] = tuple(reasons)

    kept_blobs: set[str] = set()
    kept_tags: set[tuple[str, str | None, str]] = set()
    for image in ordered:
        if kept_by[image.key]:
            kept_blobs.update(b.digest for b in image.record.blobs)
            kept_tags.add((image.record.repo, image.record.tag, image.record.digest))
    freed: dict[str, int] = {}
    decisions = []
    for image in ordered:
        record = image.record
        early: tuple[EarlyDelete, ...] = ()
        if not kept_by[image.key]:
            freed.update((b.digest, b.size) for b in record.blobs if b.digest not in kept_blobs)
            early = tuple(
                e for info in (image.info, image.tar) if (e := _early(info, now)) is not None
            )
        decisions.append(
            Decision(
                image,
                kept_by[image.key],
                early,
                unlink_tag=(record.repo, record.tag, record.digest) not in kept_tags,
            )
        )
    return PrunePlan(decisions, sum(freed.values()), now)


def _early(info: ObjectInfo | None, now: datetime) -> EarlyDelete | None:
    if info is None or info.storage_class is None or info.modified is None:
        return None
    minimum = MINIMUM_STORAGE_DAYS.get(info.storage_class)
    if minimum is None:
        return None
    age = (now - info.modified).total_seconds() / DAY
    if age >= minimum:
        return None
    return EarlyDelete(info.key, info.storage_class, minimum, age, info.size)


def apply_prune(
    bucket: ArchiveBucket,
    plan: PrunePlan,
    *,
    allow_early_delete: bool = False,
    jobs: int = 4,
    on_deleted: Callable[[Decision], None] | None = None,
) -> PrunePlan:
    """Delete what the plan says goes (see the module docstring for the order). Objects inside
    their minimum storage duration refuse the whole apply (UsageError, nothing deleted) unless
    `allow_early_delete`."""
    early = plan.early
    if early and not allow_early_delete:
        raise UsageError(
            f"{len(early)} object(s) are inside their storage class's minimum storage duration "
            f"(first: {early[0].key}, {early[0].storage_class}, "
            f"{early[0].remaining_days:.0f} day(s) left); deleting them is billed anyway: "
            "rerun with --allow-early-delete to delete them"
        )
    store = bucket.store
    protected = store.protection().protected  # a write-once bucket: retained images are kept

    def delete(decision: Decision) -> tuple[Decision, str | None]:
        image = decision.image
        planned = image.record
        try:
            now = ImageRecord.from_json(store.read(image.key))
        except StoreNotFound:
            return decision, "record already gone"
        if now.pinned:
            return decision, "pinned since the plan"
        if (now.digest, now.archived_at) != (planned.digest, planned.archived_at):
            return decision, "archived again since the plan"
        held = retained_until(store, (image.key, planned.tar_key)) if protected else None
        if held is not None:
            return decision, f"retained by the bucket until {held}"
        try:
            store.delete(image.key)
        except ObjectRetained as exc:  # a hold put on since the HEAD: nothing deleted yet
            return decision, f"retained by the bucket until {exc.until or 'released'}"
        store.delete(planned.tar_key)
        if planned.tag is not None and decision.unlink_tag:
            store.delete(layout.tag_index_link_key(planned.repo, planned.tag, planned.digest))
            if bucket.tag_digest(planned.repo, planned.tag) == planned.digest:
                store.delete(layout.tag_current_link_key(planned.repo, planned.tag))
        return decision, None

    deleted = plan.deleted
    with ThreadPoolExecutor(max(1, min(jobs, len(deleted) or 1)), "bale-prune") as pool:
        for decision, skipped in pool.map(delete, deleted):
            if skipped is not None:
                plan.skipped.append((decision.image.key, skipped))
            elif on_deleted is not None:
                on_deleted(decision)
    plan.applied = True
    log.info("prune of %s: %d image(s) deleted", bucket.url, len(deleted) - len(plan.skipped))
    return plan


def retained_until(store: ObjectStore, keys: Sequence[str]) -> str | None:
    """When the last of `keys` the bucket still retains may go ("legal hold" for a hold
    without a date); None when none is retained. One HEAD each: no refused DELETE is sent."""
    now = datetime.now(UTC)
    held: list[str] = []
    for key in keys:
        info = store.head(key)
        retention = info.held(now) if info is not None else None
        if retention is not None:
            held.append(retention.until.isoformat() if retention.until else "a legal hold ends")
    return max(held) if held else None


def pin_image(bucket: ArchiveBucket, image: str, *, pinned: bool = True) -> list[tuple[str, bool]]:
    """Set (or clear) the `pinned` field of the record `image` names; (record key, changed).

    `image` names a tag or a digest (`team/app:1.0`, `team/app@sha256:…`); when a tag has
    records for several digests (its history) the most recently archived is the one pinned.
    The record is rewritten in one put (atomic in every store), every other field kept byte
    for byte, fields this bale does not know included.
    """
    import json

    from pipeline.archive.record import select_records
    from pipeline.refs import Reference

    ref = Reference.parse(image, default_tag=None)
    if ref.tag is None and ref.digest is None:
        raise UsageError(f"{image}: name one image, with a tag or a digest")
    entries = bucket.archived()
    chosen = {id(r) for r in select_records([e.record for e in entries], image)}
    found = sorted(
        (e for e in entries if id(e.record) in chosen),
        key=lambda e: e.record.archived_at,
        reverse=True,
    )
    if not found:
        raise UsageError(f"no archived image matches {image} in {bucket.url}")
    if ref.digest is None:
        found = found[:1]
    changed = []
    for entry in found:
        data = bucket.store.read(entry.key)
        obj = json.loads(data)
        if pinned:
            obj["pinned"] = True
        else:
            obj.pop("pinned", None)
        new = json.dumps(obj, indent=2).encode() + b"\n"
        ImageRecord.from_json(new)  # still a valid record
        if new != data:
            bucket.store.put(entry.key, new)
        changed.append((entry.key, new != data))
    return changed
