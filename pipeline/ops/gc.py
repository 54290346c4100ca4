"""`bale gc`: remove blobs nothing refers to, and uploads nobody will finish.

A crash (or a deleted image) leaves blobs under `blobs/` that no tag or record reaches, and
multipart uploads that were never completed (which cloud stores bill for). gc marks from the
roots and sweeps the rest, as distribution's own garbage collector does:

- roots: every tag's current link, every record (its digest and the `blobs` it lists, which
  covers the revision and layer links the record relies on), and every link written less than
  `older_than` ago;
- marked: the roots and everything their manifests reach (index children, configs, layers);
- swept: blobs under `docker/registry/v2/blobs/` that are not marked and are older than
  `older_than`, together with the layer, revision and tag-history links that point at them
  (links first, so a crash in between leaves an unreferenced blob, never a dangling link);
- aborted: multipart uploads (and the local store's temporary files) initiated more than
  `older_than` ago;
- staging copies (`staging/<id>/<hex>`, hot copies of cold blobs a tar is composed from) older
  than `older_than`: nothing ever references one, an archive deletes its own once its tar is
  complete, so one older than the grace was left by a crash.

On a write-once bucket (S3 Object Lock, OSS WORM) what would be swept is HEADed first: what
the bucket still retains is reported (`retained`, with the date it becomes deletable) and
never sent a DELETE the bucket would refuse.

Links that already point at missing blobs are reported, not removed: that is damage for
`bale verify` to explain, not garbage.

Running next to `bale archive` (docs/lifecycle.md says more): archive writes a new blob, then
its links, tag, tar and record. A blob or link younger than `older_than` (`--grace`) is never
removed and a young link is a root, so an archive that started less than `older_than` ago keeps
what it wrote. An archive may also find an *old* unreferenced blob already stored and link it
while gc plans: so just before each batch of deletes gc lists the links and records again and
marks from every one that is new or changed since its plan (repeating while a listing finds
more), and a blob they reach is spared. What remains is the time between that listing and the
delete itself: an archive that links the blob in that moment loses it; its tar compose then
fails (before its record) when it copies the blob, and a rerun stores the blob again.

A manifest that a root reaches but that cannot be read or parsed stops gc before anything is
deleted: its blobs cannot be marked, and sweeping without them would lose data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.archive import layout
from pipeline.archive.bucket import STAGING_PREFIX, ArchiveBucket
from pipeline.archive.links import LinkKey, parse_link_key
from pipeline.archive.record import ImageRecord
from pipeline.errors import (
    InvalidArchive,
    ManifestError,
    ObjectRetained,
    StoreError,
    StoreNotFound,
)
from pipeline.oci import (
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    RawManifest,
    child_manifests,
    walk_manifests,
)
from pipeline.store.base import MultipartUpload, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

DEFAULT_OLDER_THAN = timedelta(hours=24)
DELETE_BATCH = 256
"""Blobs deleted after one re-check of the references: each batch costs a listing of the
repositories' links and the records, so small enough that the re-check is recent, large
enough that a store of a million blobs is not listed thousands of times."""
RECHECKS = 5
"""Listings per re-check at most: again while the last one found new references."""


class GcStopped(StoreError):
    """gc found something it cannot mark safely and deleted nothing."""


@dataclass(frozen=True)
class SweptBlob:
    digest: str
    key: str
    size: int
    modified: datetime | None


@dataclass(frozen=True)
class DanglingLink:
    key: str
    digest: str
    what: str
    """How the link is described: `layer link in docker.io/library/nginx`."""


@dataclass(frozen=True)
class RetainedObject:
    """Garbage the bucket keeps under retention (Object Lock, legal hold, OSS WORM): not
    deleted, said with when it becomes deletable (None: a legal hold or unknown)."""

    key: str
    size: int
    until: datetime | None
    legal_hold: bool = False


@dataclass
class GcReport:
    """What gc removed (or, with `dry_run`, would remove)."""

    dry_run: bool
    older_than: timedelta
    blobs: list[SweptBlob] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    uploads: list[MultipartUpload] = field(default_factory=list)
    dangling: list[DanglingLink] = field(default_factory=list)
    live_blobs: int = 0
    young_blobs: int = 0
    """Unreferenced blobs spared because they are younger than `older_than`."""
    retained: list[RetainedObject] = field(default_factory=list)
    """Blobs and links of `blobs`/`links` the bucket's retention keeps: not deleted."""
    staging: list[ObjectInfo] = field(default_factory=list)
    """Staging copies older than `older_than`, left by a crashed archive."""
    young_staging: int = 0
    """Staging copies spared because they are younger than `older_than` (an archive running)."""
    seconds: float = 0.0

    @property
    def bytes_freed(self) -> int:
        kept = {r.key for r in self.retained}
        return sum(b.size for b in self.blobs if b.key not in kept)

    @property
    def retained_bytes(self) -> int:
        return sum(r.size for r in self.retained)

    def summary(self) -> str:
        from pipeline.units import format_size

        verb = "would be removed" if self.dry_run else "removed"
        kept = {r.key for r in self.retained}
        blobs = sum(1 for b in self.blobs if b.key not in kept)
        links = sum(1 for key in self.links if key not in kept)
        staged = [o for o in self.staging if o.key not in kept]
        staging = (
            f", {len(staged)} staging copy(ies) ({format_size(sum(o.size for o in staged))})"
            if staged
            else ""
        )
        text = (
            f"gc: {blobs} blob(s) ({format_size(self.bytes_freed)}), "
            f"{links} link(s), {len(self.uploads)} upload(s){staging} {verb}; "
            f"{self.live_blobs} blob(s) in use"
        )
        if self.retained:
            dates = [r.until for r in self.retained if r.until is not None]
            when = f", all deletable by {max(dates):%Y-%m-%d}" if dates else ""
            held = sum(1 for r in self.retained if r.legal_hold)
            when += f", {held} under legal hold" if held else ""
            text += (
                f"; {len(self.retained)} object(s) ({format_size(self.retained_bytes)}) "
                f"retained by the bucket{when}"
            )
        if self.young_blobs:
            text += f", {self.young_blobs} unreferenced but recent blob(s) kept"
        if self.young_staging:
            text += f", {self.young_staging} recent staging copy(ies) kept"
        if self.dangling:
            text += f"; {len(self.dangling)} dangling link(s)"
        return text + f" in {self.seconds:.1f}s"


def collect_garbage(
    bucket: ArchiveBucket,
    *,
    older_than: timedelta = DEFAULT_OLDER_THAN,
    dry_run: bool = False,
    jobs: int = 4,
    now: datetime | None = None,
    batch: int = DELETE_BATCH,
) -> GcReport:
    """Mark from tags, records and recent links; sweep unreferenced blobs and stale uploads.

    Nothing younger than `older_than` is removed (blobs, links, uploads): a concurrent archive
    may be writing links for it right now. See the module docstring for the one race left.
    `now` moves the clock for blobs and links (tests); uploads are dated by the store.
    """
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    started = time.monotonic()
    cutoff = (now or datetime.now(UTC)) - older_than
    report = GcReport(dry_run=dry_run, older_than=older_than)
    store = bucket.store
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="bale-gc") as pool:
        blobs = _list_blobs(store)
        links = [
            (link, info)
            for info in store.list(layout.REPOSITORIES_PREFIX)
            if (link := parse_link_key(info.key)) is not None
        ]
        record_infos = _record_infos(store)
        records = _records(store, pool, record_infos)
        marker = _Marker(store, pool, blobs)
        targets = _link_targets(store, pool, links)

        for link, info in links:
            digest = targets.get(link.key)
            if digest is None:
                continue
            if link.kind == "tag-current" or _is_young(info.modified, cutoff):
                marker.mark(digest, walk=link.kind != "layer")
            if digest not in blobs:
                report.dangling.append(DanglingLink(link.key, digest, link.describe))
        for record in records:
            marker.mark(record.digest, walk=True)
            for blob in record.blobs:
                marker.mark(blob.digest, walk=blob.media_type in MANIFEST_TYPES)
        marker.finish()

        for digest, info in sorted(blobs.items()):
            if digest in marker.marked:
                report.live_blobs += 1
            elif not _is_young(info.modified, cutoff):
                report.blobs.append(SweptBlob(digest, info.key, info.size, info.modified))
            else:
                report.young_blobs += 1
        swept = {b.digest for b in report.blobs}
        report.links = sorted(
            link.key
            for link, _ in links
            if link.kind != "tag-current" and targets.get(link.key) in swept
        )
        report.uploads = list(store.list_uploads(older_than=older_than))
        for info in store.list(STAGING_PREFIX):
            if _is_young(info.modified, cutoff):
                report.young_staging += 1
            else:
                report.staging.append(info)

        if store.protection().protected:
            sizes = {b.key: b.size for b in report.blobs}
            sizes.update((o.key, o.size) for o in report.staging)
            report.retained = _retained(store, pool, [*report.links, *sizes], sizes)
        kept = {r.key for r in report.retained}
        if not dry_run:
            seen = {info.key: info for _, info in links}
            seen.update(_record_infos(store))
            delete = _deleter(store, report)
            _sweep(report, marker, seen, targets, pool, batch, delete, kept)
            _each(pool, store.abort_upload, report.uploads)
            _each(pool, delete, [o.key for o in report.staging if o.key not in kept])
    log.info("gc of %s: %s", bucket.url, report.summary())
    report.seconds = time.monotonic() - started
    return report


def _sweep(
    report: GcReport,
    marker: _Marker,
    seen: dict[str, ObjectInfo],
    targets: dict[str, str],
    pool: ThreadPoolExecutor,
    batch: int,
    delete: Callable[[str], None],
    kept: set[str],
) -> None:
    """Delete the planned blobs (their links first) a batch at a time, each batch only after
    reading again every link and record written or rewritten since the plan (or since the
    previous batch) and marking what they reach: an archive that linked a planned blob in the
    meantime keeps it. What was spared leaves the report; what the bucket retains (`kept`)
    is not even tried."""
    planned, report.blobs = report.blobs, []
    links_of: dict[str, list[str]] = {}
    for key in report.links:
        links_of.setdefault(targets[key], []).append(key)
    report.links = []
    for start in range(0, len(planned), max(1, batch)):
        try:
            for _ in range(RECHECKS):  # until a listing finds nothing new: its walk took time
                if not _recheck(marker, seen, pool):
                    break
        except GcStopped as exc:  # an earlier batch did delete
            done = f"{len(report.blobs)} blob(s) removed before"
            raise GcStopped(str(exc).replace("nothing deleted", done, 1)) from None
        chunk = [b for b in planned[start : start + batch] if b.digest not in marker.marked]
        spared = min(batch, len(planned) - start) - len(chunk)
        if spared:
            log.info("gc: %d blob(s) referenced since the plan, kept", spared)
        links = [key for b in chunk for key in links_of.get(b.digest, [])]
        _each(pool, delete, [key for key in links if key not in kept])
        _each(pool, delete, [b.key for b in chunk if b.key not in kept])
        report.blobs += chunk
        report.links += links
        report.live_blobs += spared
    report.links.sort()


def _recheck(marker: _Marker, seen: dict[str, ObjectInfo], pool: ThreadPoolExecutor) -> bool:
    """Mark from the links and records that are new or changed since `seen` (updated);
    whether there were any."""
    store = marker.store
    changed_links: list[tuple[LinkKey, ObjectInfo]] = []
    for info in store.list(layout.REPOSITORIES_PREFIX):
        link = parse_link_key(info.key)
        if link is not None and _changed(seen.get(info.key), info):
            changed_links.append((link, info))
            seen[info.key] = info
    changed_records = {}
    for key, info in _record_infos(store).items():
        if _changed(seen.get(key), info):
            changed_records[key] = info
            seen[key] = info
    targets = _link_targets(store, pool, changed_links)
    for link, _ in changed_links:
        if (digest := targets.get(link.key)) is not None:
            marker.mark(digest, walk=link.kind != "layer")
    for record in _records(store, pool, changed_records):
        marker.mark(record.digest, walk=True)
        for blob in record.blobs:
            marker.mark(blob.digest, walk=blob.media_type in MANIFEST_TYPES)
    marker.finish()
    return bool(changed_links or changed_records)


def _changed(before: ObjectInfo | None, now: ObjectInfo) -> bool:
    if before is None:
        return True
    return (before.modified, before.etag, before.size) != (now.modified, now.etag, now.size)


def _retained(
    store: ObjectStore, pool: ThreadPoolExecutor, keys: list[str], sizes: dict[str, int]
) -> list[RetainedObject]:
    """The `keys` the bucket would refuse to delete, from their HEADs: one HEAD for a retained
    object instead of the HEAD and refused DELETE a delete costs; no refusal is ever sent."""
    now = datetime.now(UTC)

    def retention(key: str) -> RetainedObject | None:
        info = store.head(key)
        held = info.held(now) if info is not None else None
        if info is None or held is None:
            return None
        return RetainedObject(key, sizes.get(key, info.size), held.until, held.legal_hold)

    return [r for r in pool.map(retention, keys) if r is not None]


def _deleter(store: ObjectStore, report: GcReport) -> Callable[[str], None]:
    """`store.delete`, with a refusal the HEAD did not foresee (a legal hold put on since)
    reported as retained, not failing the run."""

    def delete(key: str) -> None:
        try:
            store.delete(key)
        except ObjectRetained as exc:
            sizes = {b.key: b.size for b in report.blobs}
            sizes.update((o.key, o.size) for o in report.staging)
            size = sizes.get(key, 0)
            report.retained.append(RetainedObject(key, size, exc.until, exc.legal_hold))

    return delete


def _is_young(modified: datetime | None, cutoff: datetime) -> bool:
    """An object of unknown age counts as young: gc never removes what it cannot date."""
    return modified is None or modified > cutoff


def _list_blobs(store: ObjectStore) -> dict[str, ObjectInfo]:
    blobs = {}
    for info in store.list(layout.BLOBS_PREFIX):
        digest = layout.digest_from_blob_key(info.key)
        if digest is not None:
            blobs[digest] = info
    return blobs


def _record_infos(store: ObjectStore) -> dict[str, ObjectInfo]:
    return {
        info.key: info
        for info in store.list(layout.IMAGES_PREFIX)
        if (parsed := layout.parse_image_key(info.key)) is not None and parsed.kind == "record"
    }


def _records(
    store: ObjectStore, pool: ThreadPoolExecutor, infos: dict[str, ObjectInfo]
) -> list[ImageRecord]:
    """Every record; one that cannot be read stops gc (its blobs could not be marked)."""
    keys = list(infos)

    def read(key: str) -> ImageRecord | None:
        try:
            return ImageRecord.from_json(store.read(key), key=key)
        except StoreNotFound:
            return None  # removed since the listing: it no longer keeps anything alive
        except InvalidArchive as exc:
            raise GcStopped(f"gc stopped, nothing deleted: {exc}") from None

    return [r for r in pool.map(read, keys) if r is not None]


def _link_targets(
    store: ObjectStore, pool: ThreadPoolExecutor, links: list[tuple[LinkKey, ObjectInfo]]
) -> dict[str, str]:
    """What each link points at. Layer, revision and history links name it in their path (their
    body must say the same; verify checks that); only a tag's current link has to be read."""
    targets = {link.key: link.digest for link, _ in links if link.digest is not None}
    current = [link.key for link, _ in links if link.kind == "tag-current"]

    def read(key: str) -> tuple[str, str | None]:
        try:
            body = store.read(key)
        except StoreNotFound:
            return key, None
        digest = layout.parse_link_body(body)
        if digest is None:
            raise GcStopped(f"gc stopped, nothing deleted: tag link {key} holds no digest")
        return key, digest

    for key, digest in pool.map(read, current):
        if digest is not None:
            targets[key] = digest
    return targets


class _Marker:
    """The set of live digests, with manifests walked to everything they reach."""

    def __init__(
        self, store: ObjectStore, pool: ThreadPoolExecutor, blobs: dict[str, ObjectInfo]
    ) -> None:
        self.store = store
        self.pool = pool
        self.blobs = blobs
        self.marked: set[str] = set()
        self._roots: list[str] = []

    def mark(self, digest: str, *, walk: bool) -> None:
        self.marked.add(digest)
        if walk:
            self._roots.append(digest)

    def finish(self) -> None:
        """Walk every manifest marked as a root, reading each once (an index's children
        together), and mark everything they reach: children, subjects, configs, layers."""
        graph = walk_manifests(
            dict.fromkeys(self._roots),
            self._read,
            max_depth=None,
            missing="skip",
            subjects=True,
            fetch_map=self.pool.map,
        )
        self._roots = []
        for node in graph.nodes:
            self.marked.update(d.digest for d in child_manifests(node.manifest, subjects=True))
        self.marked.update(graph.blob_digests())

    def _read(self, digest: str, _listed: Descriptor | None) -> RawManifest | None:
        """A stored manifest's bytes, checked; None when it is not stored. One that cannot be
        read or parsed stops gc: what it references could not be marked."""
        info = self.blobs.get(digest)
        what = f"manifest {digest}"
        if info is not None and info.size > MAX_MANIFEST_BYTES:
            raise GcStopped(f"gc stopped, nothing deleted: {what} is {info.size} bytes")
        try:
            # Not listed: written since the listing (a re-check reaches it) or missing.
            key = info.key if info else layout.blob_key(digest)
            data = self.store.read(key, 0, MAX_MANIFEST_BYTES + 1)
        except StoreNotFound:
            return None
        if len(data) > MAX_MANIFEST_BYTES:
            raise GcStopped(f"gc stopped, nothing deleted: {what} is {len(data)} bytes")
        try:
            raw = RawManifest.from_bytes(data)
            if raw.digest != digest:
                raise ManifestError(f"bytes hash to {raw.digest}")
            raw.parse()
        except ManifestError as exc:
            raise GcStopped(
                f"gc stopped, nothing deleted: {what} cannot be read ({exc}); run bale verify"
            ) from None
        return raw


def _each(pool: ThreadPoolExecutor, fn: Callable[[Any], None], items: Iterable[Any]) -> None:
    for _ in pool.map(fn, items):
        pass
