"""The prune planner alone (it is pure): a tag's earlier digests, archived under their own
record keys, are images like any other; pins, exceptions and shared blobs."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from pipeline.archive import layout
from pipeline.archive.bucket import ArchivedImage
from pipeline.archive.record import BlobEntry, ImageRecord
from pipeline.ops.prune import plan_prune, rules_from
from pipeline.refs import Reference
from pipeline.retention import Retention
from pipeline.store.base import ObjectInfo

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SHARED = BlobEntry("sha256:" + hashlib.sha256(b"base").hexdigest(), 1000, "layer")


def image(tag: str, days: int, *, n: int = 0, pinned: bool = False, history: bool = False,
          storage_class: str = "STANDARD") -> ArchivedImage:  # fmt: skip
    ref = Reference.parse(f"reg.example.com/team/app:{tag}")
    digest = "sha256:" + hashlib.sha256(f"{tag}{n}".encode()).hexdigest()
    own = BlobEntry("sha256:" + hashlib.sha256(f"l{tag}{n}".encode()).hexdigest(), 100 + n, "l")
    record = ImageRecord(
        source=str(ref), repo=ref.store_repo, tag=tag, digest=digest, media_type="m",
        tar_key=layout.tar_key_for(ref), tar_digest=digest, tar_media_type="m", tar_size=10,
        archived_at=NOW - timedelta(days=days), version="t", blobs=(SHARED, own), pinned=pinned,
    )  # fmt: skip
    key = record.record_key
    if history:
        key = key.removesuffix(".json") + f"@sha256-{digest[7:]}.json"
    when = NOW - timedelta(days=days)
    tar = ObjectInfo(record.tar_key, 10, when, storage_class=storage_class)
    return ArchivedImage(record, key, ObjectInfo(key, 1, when), tar)


def test_history_entries_are_pruned_by_the_same_rules() -> None:
    images = [
        image("1.0", 1, n=2),  # the tag's current digest
        image("1.0", 50, n=1, history=True),  # the digest it pointed at before
        image("1.0", 90, n=0, history=True),
        image("2.0", 10, pinned=True),
    ]
    rules = Retention.build(keep_last=2)
    plan = plan_prune(images, rules_from([], rules), now=NOW)
    got = {(d.image.record.tag, d.image.key.count("@")): d.kept_by for d in plan.decisions}
    assert got[("1.0", 0)] == ("keep-last 2",)
    assert got[("2.0", 0)] == ("pinned", "keep-last 2")
    assert [d.image.key for d in plan.deleted] == [images[1].key, images[2].key]
    # The current digest's blobs stay; the two old digests' own layers are what gc frees.
    assert plan.gc_bytes == 101 + 100
    assert all(d.unlink_tag for d in plan.deleted)  # their own digests: no kept image shares


def test_exceptions_semver_and_early_deletion() -> None:
    images = [image("1.0", 200), image("2.3", 300), image("latest", 400), image("x", 20, storage_class="GLACIER_IR")]  # fmt: skip
    rules = Retention.build(keep_semver="^2", exclude_tags=("latest",))
    plan = plan_prune(images, rules_from([], rules), now=NOW)
    kept = {d.image.record.tag: d.kept_by for d in plan.kept}
    assert kept == {"2.3": ("keep-semver ^2",), "latest": ("exclude-tags latest",)}
    (early,) = plan.early
    assert (early.storage_class, early.minimum_days, round(early.remaining_days)) == (
        "GLACIER_IR",
        90,
        70,
    )
    assert plan.to_json("s3://b")["early_delete"] == 1
