"""What the catalog shows, kept in memory and refreshed from store listings.

A page must not read 10,000 records. The index lists `images/` (one listing: pages of 1,000
keys on S3/OSS) and reads only the records whose listing entry changed since the last refresh
(size, ETag or date), so after the first build a refresh costs the listing and the new
records. Pages then filter, sort and slice the snapshot in memory. A stale snapshot is served
while the next one is built in the background: page loads never wait for the store, except
the very first.

Records are read with `ImageRecord.from_json` and keys taken apart with `layout`, as `bale ls`
does; signatures and attestations come from the repository's tags (cosign's
`sha256-<hex>.sig/.att/.sbom`, and the OCI referrers fallback tag `sha256-<hex>`, see
ops/referrers.py), listed again for repositories whose records changed and, every tenth refresh,
for all. A refresh that finds nothing new keeps the snapshot it has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.record import ImageRecord
from pipeline.errors import BaleError
from pipeline.ops.referrers import fallback_tag
from pipeline.store.base import ObjectInfo, ObjectStore

log = logging.getLogger("bale.serve")

DEFAULT_MAX_AGE = 30.0
"""Seconds a snapshot is served before a page load starts the next refresh."""

_READERS = 16
"""Records read at once on a (re)build: a round trip each on S3/OSS."""

TAGS_RELIST_EVERY = 10
"""Every this many refreshes, all repositories' tags are listed again (else only those whose
records changed): a signature archived on its own shows within ten refreshes."""

ARTIFACT_KINDS = {".sig": "signature", ".att": "attestation", ".sbom": "sbom", "": "referrers"}
"""Tag suffix after `sha256-<hex>` → what the catalog calls it."""


@dataclass(frozen=True)
class CatalogImage:
    """One archived image as the catalog lists it."""

    record: ImageRecord
    storage_class: str | None
    """The tar's storage class from the listing; None for a local store."""
    tar_present: bool
    artifacts: tuple[str, ...] = ()
    """What refers to the image in its repository: signature, attestation, sbom, referrers."""

    @property
    def repo(self) -> str:
        return self.record.repo

    @property
    def ref(self) -> str:
        """The image's name inside its repository: the tag, or the digest it was pinned by."""
        return self.record.tag or self.record.digest

    @property
    def tar_name(self) -> str:
        return self.record.tar_key.rpartition("/")[2]

    @property
    def registry(self) -> str:
        """The source registry: `source` is `registry/repository[:tag][@digest]`, and a registry
        name never holds a `/` (parsing the reference again costs a refresh 10,000 parses)."""
        return self.record.source.split("/", 1)[0]


@dataclass(frozen=True)
class RepoSummary:
    """A repository's line on the catalog's front page."""

    repo: str
    images: int
    tags: int
    stored_bytes: int
    """Each image's blobs counted on their own: what the images would take without dedup."""
    unique_bytes: int
    """The repository's distinct blobs: what the content-addressed area holds for it."""
    tar_bytes: int
    last_archived: datetime
    registries: tuple[str, ...]


@dataclass(frozen=True)
class Totals:
    repos: int
    images: int
    stored_bytes: int
    unique_bytes: int
    tar_bytes: int


@dataclass(frozen=True)
class Snapshot:
    """The catalog at one moment; never changed once built."""

    images: tuple[CatalogImage, ...]
    repos: tuple[RepoSummary, ...]
    totals: Totals
    built_at: float
    problems: tuple[str, ...] = ()
    """Records that could not be read (named by key), shown rather than failing the page."""
    by_repo: dict[str, tuple[CatalogImage, ...]] = field(default_factory=dict)
    by_ref: dict[tuple[str, str], CatalogImage] = field(default_factory=dict)
    orders: dict[Any, list[Any]] = field(default_factory=dict, compare=False)
    """Sorted lists pages asked for, kept for the snapshot's life (catalog.py fills it)."""

    def image(self, repo: str, ref: str) -> CatalogImage | None:
        """By tag, or by digest (the record's own, or the manifest in its tar)."""
        found = self.by_ref.get((repo, ref))
        if found is not None or ":" not in ref:
            return found
        for item in self.by_repo.get(repo, ()):
            if ref in (item.record.digest, item.record.tar_digest):
                return item
        return None


def summarise(images: Iterable[CatalogImage]) -> tuple[tuple[RepoSummary, ...], Totals]:
    """Per-repository sizes and the store's totals; dedup counts each blob digest once."""
    grouped: dict[str, list[CatalogImage]] = {}
    for item in images:
        grouped.setdefault(item.repo, []).append(item)
    repos = []
    everywhere: dict[str, int] = {}
    stored_all = tar_all = 0
    for repo in sorted(grouped):
        items = grouped[repo]
        unique: dict[str, int] = {}
        for item in items:
            for blob in item.record.blobs:
                unique[blob.digest] = blob.size
        everywhere.update(unique)
        stored = sum(i.record.blob_bytes for i in items)
        tars = sum(i.record.tar_size for i in items)
        stored_all += stored
        tar_all += tars
        repos.append(
            RepoSummary(
                repo=repo,
                images=len(items),
                tags=sum(1 for i in items if i.record.tag is not None),
                stored_bytes=stored,
                unique_bytes=sum(unique.values()),
                tar_bytes=tars,
                last_archived=max(i.record.archived_at for i in items),
                registries=tuple(sorted({i.registry for i in items})),
            )
        )
    images_all = sum(r.images for r in repos)
    totals = Totals(len(repos), images_all, stored_all, sum(everywhere.values()), tar_all)
    return tuple(repos), totals


def build_snapshot(images: list[CatalogImage], problems: Iterable[str] = ()) -> Snapshot:
    ordered = tuple(sorted(images, key=lambda i: (i.repo, i.ref)))
    repos, totals = summarise(ordered)
    by_repo: dict[str, list[CatalogImage]] = {}
    for item in ordered:
        by_repo.setdefault(item.repo, []).append(item)
    return Snapshot(
        images=ordered,
        repos=repos,
        totals=totals,
        built_at=time.time(),
        problems=tuple(problems),
        by_repo={repo: tuple(items) for repo, items in by_repo.items()},
        by_ref={(i.repo, i.ref): i for i in ordered},
    )


def artifacts_of(digest: str, tags: frozenset[str]) -> tuple[str, ...]:
    """What the repository's tags say refers to `digest` (ops/referrers.py's conventions)."""
    base = fallback_tag(digest)
    return tuple(kind for suffix, kind in ARTIFACT_KINDS.items() if base + suffix in tags)


_Fingerprint = tuple[int, str | None, datetime | None]


def _fingerprint(info: ObjectInfo) -> _Fingerprint:
    return (info.size, info.etag, info.modified)


class CatalogIndex:
    """The catalog's data for one store, rebuilt from listings (see the module docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = ArchiveBucket(store)
        self.max_age = max_age
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._taken_at = 0.0
        self._records: dict[str, tuple[_Fingerprint, ImageRecord]] = {}
        self._bad: dict[str, tuple[_Fingerprint, str]] = {}
        """Records that did not read, not read again until they change."""
        self._tags: dict[str, frozenset[str]] = {}
        self._tar_state: dict[str, tuple[int, str | None]] = {}
        self._lock = threading.Lock()
        """Held by the one refresh running; page loads never take it once a snapshot exists."""
        self._background: threading.Thread | None = None
        self.refreshes = 0
        self.records_read = 0
        """Records read from the store since start: a refresh with no change reads none."""

    @property
    def store(self) -> ObjectStore:
        return self.bucket.store

    def warm(self) -> None:
        """Start building the first snapshot now (at startup), so that the first page need not
        wait for it: on S3 the first build reads every record, a round trip each."""
        if self._snapshot is None:
            self._refresh_in_background()

    def snapshot(self) -> Snapshot:
        """The current snapshot; builds the first one (or waits for `warm`'s), and starts a
        refresh when it is old."""
        current = self._snapshot
        if current is None:
            background = self._background
            if background is not None and background.is_alive():
                background.join()
            return self._snapshot or self.refresh()
        if self._clock() - self._taken_at >= self.max_age:
            self._refresh_in_background()
        return current

    def _refresh_in_background(self) -> None:
        if self._background is not None and self._background.is_alive():
            return

        def run() -> None:
            try:
                self.refresh()
            except BaleError as exc:  # keep serving the last snapshot; say why once
                log.warning("catalog refresh failed: %s", exc)

        self._background = threading.Thread(target=run, name="bale-catalog", daemon=True)
        self._background.start()

    def refresh(self) -> Snapshot:
        """List the store and build a new snapshot, reading only new or changed records."""
        with self._lock:
            started = self._clock()
            records: dict[str, ObjectInfo] = {}
            tars: dict[str, ObjectInfo] = {}
            for info in self.store.list(layout.IMAGES_PREFIX):
                parsed = layout.parse_image_key(info.key)
                if parsed is None:
                    continue
                (records if parsed.kind == "record" else tars)[info.key] = info
            known = {key: entry[0] for key, entry in (*self._records.items(), *self._bad.items())}
            changed = [k for k, info in records.items() if known.get(k) != _fingerprint(info)]
            touched = {self._records[k][1].repo for k in self._records if k not in records}
            for key in set(self._records) - set(records):
                del self._records[key]
            for key in set(self._bad) - set(records):
                del self._bad[key]
            self._read_records(changed, records)
            touched.update(self._records[k][1].repo for k in changed if k in self._records)
            repos = {record.repo for _, record in self._records.values()}
            every = self.refreshes % TAGS_RELIST_EVERY == 0
            tags_changed = self._list_tags(
                r for r in repos if every or r in touched or r not in self._tags
            )
            for repo in set(self._tags) - repos:
                del self._tags[repo]
            tar_state = {key: (info.size, info.storage_class) for key, info in tars.items()}
            same = not changed and not touched and not tags_changed
            if same and tar_state == self._tar_state and self._snapshot is not None:
                self._taken_at = started  # nothing new: the snapshot stands
                self.refreshes += 1
                return self._snapshot
            self._tar_state = tar_state
            images = []
            for _, record in self._records.values():
                tar = tars.get(record.tar_key)
                images.append(
                    CatalogImage(
                        record=record,
                        storage_class=tar.storage_class if tar is not None else None,
                        tar_present=tar is not None,
                        artifacts=artifacts_of(
                            record.digest, self._tags.get(record.repo, frozenset())
                        ),
                    )
                )
            snapshot = build_snapshot(images, (problem for _, problem in self._bad.values()))
            self._snapshot = snapshot
            self._taken_at = started
            self.refreshes += 1
            return snapshot

    def _read_records(self, keys: list[str], infos: dict[str, ObjectInfo]) -> None:
        def read(key: str) -> tuple[str, ImageRecord | None, str | None]:
            try:
                return key, ImageRecord.from_json(self.store.read(key), key=key), None
            except BaleError as exc:
                return key, None, f"{key}: {exc}"

        if not keys:
            return
        with ThreadPoolExecutor(min(_READERS, len(keys)), "bale-catalog-read") as pool:
            for key, record, problem in pool.map(read, keys):
                self.records_read += 1
                if record is None:
                    self._records.pop(key, None)
                    self._bad[key] = (_fingerprint(infos[key]), problem or key)
                    log.warning("catalog: %s", problem)
                    continue
                self._bad.pop(key, None)
                self._records[key] = (_fingerprint(infos[key]), record)

    def _list_tags(self, repos: Iterable[str]) -> bool:
        """List the tags of `repos` again; whether any repository's tags changed."""
        wanted = list(repos)
        if not wanted:
            return False
        changed = False

        def tags(repo: str) -> tuple[str, frozenset[str]]:
            return repo, frozenset(self.bucket.tags(repo))

        with ThreadPoolExecutor(min(_READERS, len(wanted)), "bale-catalog-tags") as pool:
            for repo, found in pool.map(tags, wanted):
                changed = changed or self._tags.get(repo) != found
                self._tags[repo] = found
        return changed
