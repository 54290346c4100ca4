"""Signatures, attestations and SBOMs travel with their images (`--referrers`, on by default).

Two conventions put them next to an image in its own repository, and bale follows both:

- cosign's tags: `sha256-<hex>.sig`, `.att` and `.sbom` name a manifest whose layers hold the
  signature, attestation or SBOM of the manifest `sha256:<hex>`.
- OCI referrers (image-spec/distribution-spec 1.1): a manifest whose `subject` is the image's
  descriptor, listed by `GET /v2/<name>/referrers/<digest>`. A registry without that API
  (distribution 2.8.2) gets the list from the client instead, as an OCI index under the tag
  `sha256-<hex>` (the "tag schema" fallback that oras, regclient and cosign maintain).

What an operation does with them, in one place (`find_referrers`, then `copy_referrers`):
the subject is written first, then its referrers (a registry that validates `subject` refuses a
referrer whose subject is missing), then referrers of those (a signature on an attestation),
level by level. Each referrer is copied by the copy engine like any image (blobs first,
children before an index), under its cosign tag or by digest. Where the destination does not
list an OCI referrer after that (no referrers API), its `sha256-<hex>` index is written: the
source's own index bytes when the destination had none, so even that digest is kept, else the
destination's index with the new entries appended.

The archive bucket is such a repository too: referrers are stored as ordinary manifests and
tags of the image's repository (`_manifests/tags/sha256-<hex>.sig/...`, and OCI referrers always
under the fallback tag `sha256-<hex>`, since a bucket has no referrers API), so a stock registry
serving the bucket serves them, `gc` keeps them (they are tagged) and `restore` finds them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.copy.engine import copy_image
from pipeline.copy.session import Session, TagListings
from pipeline.errors import ManifestError, NotFound, StoreNotFound
from pipeline.image import ImageDestination, ImageSource
from pipeline.oci import (
    INDEX_TYPES,
    OCI_INDEX,
    Descriptor,
    ImageIndex,
    ImageManifest,
    RawManifest,
    digest_hex,
)
from pipeline.refs import Reference
from pipeline.registry.client import RegistryClient
from pipeline.registry.destination import RegistryDestination
from pipeline.registry.push import pusher_for
from pipeline.registry.source import RegistrySource
from pipeline.transports.bucket import BucketDestination

if TYPE_CHECKING:  # the archive bucket is imported where it is used: sync never needs it
    from pipeline.archive.bucket import ArchiveBucket

log = logging.getLogger("bale.referrers")

COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
MAX_DEPTH = 3
"""Referrers of referrers followed this many levels down (a signed attestation is level 2)."""

_ARTIFACT_TAG = re.compile(r"^sha256-([0-9a-f]{64})(\.sig|\.att|\.sbom)?$")


def fallback_tag(digest: str) -> str:
    """`sha256-<hex>`: where a registry without the referrers API keeps `digest`'s referrers."""
    return f"sha256-{digest_hex(digest)}"


def cosign_tags(digest: str) -> tuple[str, ...]:
    return tuple(fallback_tag(digest) + suffix for suffix in COSIGN_SUFFIXES)


def artifact_subject(tag: str) -> str | None:
    """The digest a referrer tag (`sha256-<hex>[.sig|.att|.sbom]`) belongs to; None for a tag
    that is not one."""
    match = _ARTIFACT_TAG.match(tag)
    return f"sha256:{match.group(1)}" if match else None


@dataclass(frozen=True)
class Referrer:
    """One manifest that refers to `subject`."""

    subject: str
    manifest: Descriptor
    tag: str | None = None
    """Its cosign tag; None for an OCI referrer (found through its `subject` field)."""


@dataclass
class Referrers:
    """What `find_referrers` found, subjects always before what refers to them."""

    items: list[Referrer] = field(default_factory=list)
    indexes: dict[str, RawManifest] = field(default_factory=dict)
    """subject → the source's fallback index (`sha256-<hex>` tag), exact bytes."""

    def __bool__(self) -> bool:
        return bool(self.items)

    def oci_by_subject(self) -> dict[str, list[Descriptor]]:
        out: dict[str, list[Descriptor]] = {}
        for item in self.items:
            if item.tag is None:
                out.setdefault(item.subject, []).append(item.manifest)
        return out


# ---- repositories as referrers see them ----------------------------------------------------


class ReferrerRepo(Protocol):
    """One repository (registry or bucket) where referrers are read and written."""

    reference: Reference

    def tags(self) -> frozenset[str]: ...

    def tag_manifest(self, tag: str) -> Descriptor | None: ...

    def listed_referrers(self, subject: str) -> list[Descriptor]:
        """What the repository itself lists for `subject` (its API, or its fallback index)."""
        ...

    def get_manifest(self, reference: str) -> RawManifest | None: ...

    def image(self, digest: str) -> ImageSource: ...

    def destination(self, tag: str | None) -> ImageDestination: ...

    def put_fallback_index(self, subject: str, raw: RawManifest) -> None: ...


def _pinned(ref: Reference, digest: str) -> Reference:
    return replace(ref, tag=None, digest=digest)


class RegistryRepo:
    """A registry repository; its tag list is read once (per run, given `listings`)."""

    def __init__(
        self,
        client: RegistryClient,
        reference: Reference,
        listings: TagListings | None = None,
    ) -> None:
        self.client = client
        self.reference = replace(reference, tag=None, digest=None)
        self.listings = listings or TagListings()

    @property
    def repository(self) -> str:
        return self.reference.repository

    def tags(self) -> frozenset[str]:
        return self.listings.get(
            (self.client.registry, self.repository),
            lambda: self.client.list_tags(self.repository),
        )

    def tag_manifest(self, tag: str) -> Descriptor | None:
        return self.client.head_manifest(self.repository, tag)

    def listed_referrers(self, subject: str) -> list[Descriptor]:
        try:
            return self.client.referrers(self.repository, subject)
        except NotFound:
            return []

    def get_manifest(self, reference: str) -> RawManifest | None:
        try:
            return self.client.get_manifest(self.repository, reference)
        except NotFound:
            return None

    def image(self, digest: str) -> ImageSource:
        return RegistrySource(self.client, _pinned(self.reference, digest))

    def destination(self, tag: str | None) -> ImageDestination:
        return RegistryDestination(self.client, self.reference.with_tag(tag))

    def put_fallback_index(self, subject: str, raw: RawManifest) -> None:
        pusher_for(self.client).put_manifest(self.repository, fallback_tag(subject), raw)


class BucketRepo:
    """An image's repository in the archive bucket (`<host>/<repo>` under the registry layout)."""

    def __init__(
        self, bucket: ArchiveBucket, reference: Reference, listings: TagListings | None = None
    ) -> None:
        self.bucket = bucket
        self.reference = replace(reference, tag=None, digest=None)
        self.repo = self.reference.store_repo
        self.listings = listings or TagListings()

    def tags(self) -> frozenset[str]:
        return self.listings.get((self.bucket.url, self.repo), lambda: self.bucket.tags(self.repo))

    def tag_manifest(self, tag: str) -> Descriptor | None:
        digest = self.bucket.tag_digest(self.repo, tag)
        if digest is None:
            return None
        return self.bucket.read_manifest(digest).descriptor()

    def listed_referrers(self, subject: str) -> list[Descriptor]:
        raw = self.get_manifest(fallback_tag(subject))
        return index_entries(raw) if raw is not None else []

    def get_manifest(self, reference: str) -> RawManifest | None:
        digest = reference if ":" in reference else self.bucket.tag_digest(self.repo, reference)
        if digest is None:
            return None
        try:
            return self.bucket.read_manifest(digest)
        except StoreNotFound:
            return None

    def image(self, digest: str) -> ImageSource:
        from pipeline.archive.bucket import BucketImage

        return BucketImage(self.bucket, _pinned(self.reference, digest))

    def destination(self, tag: str | None) -> ImageDestination:
        return BucketDestination(self.bucket, self.reference.with_tag(tag))

    def put_fallback_index(self, subject: str, raw: RawManifest) -> None:
        dest = BucketDestination(self.bucket, self.reference)
        dest.put_manifest(raw, fallback_tag(subject))


def repo_of(source: ImageSource, session: Session | None = None) -> ReferrerRepo | None:
    """The repository an image source reads from, when referrers can be found there."""
    listings = session.listings if session is not None else None
    if isinstance(source, RegistrySource):
        return RegistryRepo(source.client, source.reference, listings)
    from pipeline.archive.bucket import BucketImage

    if isinstance(source, BucketImage):
        return BucketRepo(source.bucket, source.reference, listings)
    return None


# ---- finding and copying -------------------------------------------------------------------


def index_entries(raw: RawManifest) -> list[Descriptor]:
    if raw.media_type not in INDEX_TYPES:
        return []
    parsed = raw.parse()
    return list(parsed.manifests) if isinstance(parsed, ImageIndex) else []


def written_subjects(source: ImageSource, digest: str) -> list[str]:
    """The manifests a copy that wrote `digest` from `source` put at its destination."""
    return manifest_digests(source, source.manifest(digest))


def manifest_digests(source: ImageSource, top: RawManifest) -> list[str]:
    """`top` and every manifest under it: each can be a subject of its own referrers."""
    out = [top.digest]
    parsed = top.parse()
    if isinstance(parsed, ImageIndex):
        for desc in parsed.manifests:
            try:
                child = source.manifest(desc.digest)
            except (NotFound, StoreNotFound):
                continue  # an archive that kept one platform of the index
            out.extend(d for d in manifest_digests(source, child) if d not in out)
    return out


def find_referrers(
    repo: ReferrerRepo, subjects: Iterable[str], *, depth: int = MAX_DEPTH
) -> Referrers:
    """Every referrer of `subjects` in `repo`, level by level (subjects before referrers).

    The cosign tags and the fallback tag are looked for in the repository's tag list (one
    listing, then a HEAD per tag present); without a fallback tag the referrers API is asked
    (`RegistryClient.referrers`, which itself falls back to the tag on a registry without it).
    """
    found = Referrers()
    seen: set[tuple[str, str | None]] = set()
    visited: set[str] = set()
    level = list(dict.fromkeys(subjects))
    tags = repo.tags()
    for _ in range(depth):
        following: list[str] = []
        for subject in level:
            if subject in visited:
                continue
            visited.add(subject)
            for item in _referrers_of(repo, subject, tags, found):
                key = (item.manifest.digest, item.tag)
                if key in seen:
                    continue
                seen.add(key)
                found.items.append(item)
                following.append(item.manifest.digest)
        level = following
        if not level:
            break
    return found


def _referrers_of(
    repo: ReferrerRepo, subject: str, tags: frozenset[str], found: Referrers
) -> list[Referrer]:
    out: list[Referrer] = []
    for tag in cosign_tags(subject):
        if tag in tags:
            desc = repo.tag_manifest(tag)
            if desc is not None:
                out.append(Referrer(subject, desc, tag))
    index_tag = fallback_tag(subject)
    if index_tag in tags:
        raw = repo.get_manifest(index_tag)
        entries = index_entries(raw) if raw is not None else []
        if raw is not None and entries:
            found.indexes[subject] = raw
    else:
        entries = repo.listed_referrers(subject)
    out.extend(Referrer(subject, desc) for desc in entries)
    return out


@dataclass
class ReferrerStats:
    copied: int = 0
    present: int = 0
    """Already at the destination (under their tag, for cosign tags)."""
    indexes_written: int = 0
    bytes_read: int = 0
    bytes_uploaded: int = 0


def copy_referrers(
    found: Referrers, source: ReferrerRepo, target: ReferrerRepo, session: Session
) -> ReferrerStats:
    """Write `found` (read from `source`) into `target`, whose subjects are already there.

    Each referrer goes through the copy engine whole (an index referrer with all its
    children), under its cosign tag or by digest. Call from outside the session's pool.
    """
    stats = ReferrerStats()
    for item in found.items:
        dest = target.destination(item.tag)
        if dest.has_manifest(item.manifest.digest, item.tag):
            stats.present += 1
            continue
        result = copy_image(
            source.image(item.manifest.digest),
            dest,
            session=session,
            all_platforms=True,
            tag=item.tag,
        )
        stats.copied += 1
        stats.bytes_read += result.bytes_read
        stats.bytes_uploaded += result.bytes_uploaded
    for subject, descriptors in found.oci_by_subject().items():
        if _write_fallback(subject, descriptors, found.indexes.get(subject), target):
            stats.indexes_written += 1
    return stats


def _write_fallback(
    subject: str, descriptors: list[Descriptor], theirs: RawManifest | None, target: ReferrerRepo
) -> bool:
    """Make `target` list `descriptors` as referrers of `subject`; True when an index was
    written (the target has no referrers API, or its index lacked some)."""
    listed = {d.digest for d in target.listed_referrers(subject)}
    missing = [d for d in descriptors if d.digest not in listed]
    if not missing:
        return False
    existing = target.get_manifest(fallback_tag(subject))
    if existing is not None and existing.media_type not in INDEX_TYPES:
        raise ManifestError(
            f"{target.reference.name}:{fallback_tag(subject)} exists and is not an index: "
            "cannot list referrers there"
        )
    if existing is None and theirs is not None:
        covered = {d.digest for d in index_entries(theirs)}
        if all(d.digest in covered for d in missing):
            target.put_fallback_index(subject, theirs)
            return True
    target.put_fallback_index(subject, merged_index(existing, missing))
    return True


def merged_index(existing: RawManifest | None, add: Iterable[Descriptor]) -> RawManifest:
    """A fallback index: `existing`'s entries (as they were) and then those of `add` it lacks."""
    obj: dict[str, Any]
    if existing is not None:
        obj = json.loads(existing.data)
    else:
        obj = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    entries = obj.setdefault("manifests", [])
    present = {e.get("digest") for e in entries if isinstance(e, dict)}
    for desc in add:
        if desc.digest not in present:
            entries.append(desc.to_json())
            present.add(desc.digest)
    data = json.dumps(obj, separators=(",", ":")).encode()
    return RawManifest.from_bytes(data, OCI_INDEX)


def referrer_descriptor(raw: RawManifest) -> Descriptor:
    """How a referrers list describes `raw` (distribution-spec 1.1): its media type, digest and
    size, `artifactType` (the manifest's, else its config's media type) and its annotations."""
    obj = json.loads(raw.data)
    parsed = raw.parse()
    artifact = obj.get("artifactType")
    if not artifact and isinstance(parsed, ImageManifest):
        artifact = parsed.config.media_type
    return Descriptor(
        raw.media_type,
        raw.digest,
        len(raw.data),
        annotations=dict(obj.get("annotations") or {}),
        artifact_type=artifact or None,
    )


@dataclass(frozen=True)
class Lookup:
    """The referrers found for an image, and the repository they are to be read from."""

    source: ImageSource
    repo: ReferrerRepo | None
    """None when the source is not a repository (a tar): nothing to find there."""
    found: Referrers


def look_up_referrers(
    source_image: ImageSource, subjects: Iterable[str], session: Session
) -> Lookup:
    """The referrers of `subjects` where `source_image` lives. Only reads, so it can run
    while the subjects themselves are still being written (`sync` does)."""
    repo = repo_of(source_image, session)
    return Lookup(source_image, repo, find_referrers(repo, subjects) if repo else Referrers())


def copy_looked_up(lookup: Lookup, target: ReferrerRepo, session: Session) -> ReferrerStats:
    """Copy what `look_up_referrers` found into `target`, whose subjects are there now."""
    if lookup.repo is None or not lookup.found:
        return ReferrerStats()
    log.info("%s: %d referrer(s)", lookup.source.reference, len(lookup.found.items))
    return copy_referrers(lookup.found, lookup.repo, target, session)


def sync_referrers(
    source_image: ImageSource, subjects: Iterable[str], target: ReferrerRepo, session: Session
) -> ReferrerStats:
    """Find the referrers of `subjects` (manifests just written to `target`) where
    `source_image` lives, and copy them into `target`; nothing when the source is not a
    repository (a tar)."""
    return copy_looked_up(look_up_referrers(source_image, subjects, session), target, session)
