"""`bale sync`: registry to registry, one repository or a spec file, as `skopeo sync` does it.

    bale sync docker://SRC-HOST/REPO[:TAG|@DIGEST] docker://DST-HOST[/PREFIX]
    bale sync --src yaml SPEC.yaml docker://DST-HOST[/PREFIX]

What skopeo's `cmd/skopeo/sync.go` does, and bale keeps:

- `--src docker`: SOURCE is a repository (every tag, in the registry's order; a repository
  without tags is an error) or one image (a tag or a digest). `docker://` may be left out, as
  skopeo spells it (`registry.example.com/busybox`).
- `--src yaml`: the images a spec file selects (`pipeline/batch/plan.py`, the expansion
  `bale run` uses; per-registry credentials and `tls-verify`; a repository whose tags cannot be
  listed is a failed entry, the rest goes on).
- Where an image goes: `DESTINATION/` + the last path component of the source reference, tag
  or digest included: `docker.io/library/busybox:1.36` → `DST/busybox:1.36`, and
  `…/busybox@sha256:…` → `DST/busybox@sha256:…`, pushed by digest. With `--scoped`, the whole
  reference: `DST/docker.io/library/busybox:1.36`. A source host with a port cannot be scoped
  (`:` is not allowed in a repository path); skopeo refuses it too. Every destination is worked
  out before anything moves, so such a mistake exits 2 with nothing written.
- Without `--all`, an index is copied as its linux/amd64 image (skopeo: the running system's
  platform; `--platform` picks another), under that image's digest; with `--all` it is copied
  whole, digest kept.
- A tag whose destination already names the digest that would be written is skipped (skopeo's
  `OptimizeDestinationImageAlreadyExists`): a HEAD, no blob request.
- The first failure stops the sync (images not yet started are not attempted, exit 1);
  `--keep-going` tries every image. `--dry-run` writes nothing: it reads manifests and the
  destination's HEADs and reports each image as `planned` or `skipped`.

Where bale differs:

- a few images move at once; `--jobs` bounds the blob transfers of the whole sync;
- blobs stream from registry to registry through the copy engine (`copy/engine.py`), mounted when
  source and destination are one registry;
- signatures and attestations travel with their subject (`--referrers`, the default): after an
  image, its cosign tags and OCI referrers (`ops/referrers.py`). A repository's own referrer
  tags (`sha256-<hex>`, `sha256-<hex>.sig|.att|.sbom`) are synced after every ordinary tag, so
  a subject always arrives before what refers to it; those already carried along are skipped.
  Such tags are always copied whole: a fallback index has no platform to pick, where skopeo
  without `--all` fails on it.
- `--dest-compress-format zstd` recompresses layers (`transfer/recompress.py`). The skip check
  then compares images by their configs (recompression changes every manifest digest but keeps
  the config), and referrers stay behind: they sign the old digests.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipeline.copy.engine import copy_image
from pipeline.copy.events import image_events
from pipeline.copy.result import ImageResult
from pipeline.copy.session import RegistryOptions, Session
from pipeline.errors import BaleError, InvalidReference, NotFound, UsageError
from pipeline.image import DEFAULT_PLATFORM, ImageSource, select_platforms
from pipeline.oci import OCI_LAYER_ZSTD, ImageIndex, ImageManifest, Platform, RawManifest
from pipeline.ops.referrers import (
    Lookup,
    RegistryRepo,
    artifact_subject,
    copy_looked_up,
    look_up_referrers,
    manifest_digests,
)
from pipeline.refs import Reference
from pipeline.registry.client import RegistryClient
from pipeline.registry.destination import RegistryDestination
from pipeline.registry.push import pusher_for
from pipeline.registry.source import RegistrySource
from pipeline.transfer.progress import TransferEvents
from pipeline.transfer.recompress import CompressOptions

log = logging.getLogger("bale.sync")

SOURCE_TRANSPORTS = ("docker", "yaml")
DEST_TRANSPORTS = ("docker",)


@dataclass(frozen=True)
class SyncItem:
    """One image to sync: where it is read, where it goes, how its registry is reached."""

    source: Reference
    dest: Reference
    registry: RegistryOptions = field(default_factory=RegistryOptions)

    @property
    def is_referrer_tag(self) -> bool:
        """A cosign or fallback tag (`sha256-<hex>[.sig|.att|.sbom]`): synced after the rest."""
        return self.source.tag is not None and artifact_subject(self.source.tag) is not None


@dataclass
class SyncPlan:
    items: list[SyncItem] = field(default_factory=list)
    failures: list[ImageResult] = field(default_factory=list)
    """Spec repositories whose tags could not be listed."""
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class SyncOptions:
    scoped: bool = False
    all_platforms: bool = False
    platform: Platform | None = None
    """The image taken from an index without `all_platforms` (default linux/amd64)."""
    dry_run: bool = False
    keep_going: bool = False
    referrers: bool = True
    compress: CompressOptions | None = None


# ---- naming ------------------------------------------------------------------------------


def strip_transport(text: str) -> str:
    return text[len("docker://") :] if text.startswith("docker://") else text


def destination_for(source: Reference, destination: str, *, scoped: bool = False) -> Reference:
    """skopeo's destination: `path.Join(DESTINATION, suffix)` with `suffix` the source
    reference (`--scoped`) or its last path component, then parsed as a docker reference."""
    suffix = str(source) if scoped else posixpath.basename(str(source))
    joined = posixpath.normpath(posixpath.join(strip_transport(destination), suffix))
    try:
        return Reference.parse(joined, default_tag=None)
    except InvalidReference as exc:
        hint = " (--scoped keeps the source host, and a host:port is no repository path)"
        raise InvalidReference(
            f"cannot sync {source} to {joined}: {exc}{hint if scoped else ''}"
        ) from None


def _check_destination(destination: str) -> str:
    text = strip_transport(destination).rstrip("/")
    if not text:
        raise UsageError("sync needs a destination registry (docker://HOST[/PREFIX])")
    if "@" in text or ("/" in text and ":" in text.rsplit("/", 1)[-1]):
        raise UsageError(f"sync destination {destination} must be a registry or prefix, not a tag")
    return text


def _ordered(items: list[SyncItem], referrers: bool) -> list[SyncItem]:
    """Referrer tags after every ordinary image, when referrers travel with their subject."""
    if not referrers:
        return items
    return [i for i in items if not i.is_referrer_tag] + [i for i in items if i.is_referrer_tag]


def plan_repository(
    source: str,
    destination: str,
    session: Session,
    registry: RegistryOptions,
    options: SyncOptions,
) -> SyncPlan:
    """`--src docker`: one image, or every tag of a repository."""
    plan = SyncPlan()
    ref = Reference.parse(strip_transport(source), default_tag=None)
    dest = _check_destination(destination)
    if ref.tag is not None or ref.digest is not None:
        refs = [ref]
    else:
        tags = session.client(ref.registry, registry).list_tags(ref.repository)
        if not tags:
            raise NotFound(f"no images to sync found in {ref.name}", registry=ref.registry)
        session.listings.put((ref.registry, ref.repository), tags)
        refs = []
        for tag in tags:
            try:
                refs.append(ref.with_tag(tag))
            except InvalidReference:
                log.error("%s: skipping tag %r", ref.name, tag)
    items = [SyncItem(r, destination_for(r, dest, scoped=options.scoped), registry) for r in refs]
    plan.items = _ordered(items, options.referrers)
    return plan


def plan_images(
    images: Iterable[tuple[Reference, RegistryOptions]],
    destination: str,
    options: SyncOptions,
    *,
    failures: list[ImageResult],
    started: datetime,
) -> SyncPlan:
    """`--src yaml`: the images a spec selected (batch/plan.py), each with its registry's
    options, given their destinations; `failures` are the repositories it could not list."""
    dest = _check_destination(destination)
    items = [
        SyncItem(ref, destination_for(ref, dest, scoped=options.scoped), registry)
        for ref, registry in images
    ]
    return SyncPlan(_ordered(items, options.referrers), failures, started)


# ---- one image -----------------------------------------------------------------------------


class Syncer:
    """Syncs images into one destination registry, sharing the session's clients and pool."""

    def __init__(
        self,
        session: Session,
        dest_registry: RegistryOptions | None = None,
        options: SyncOptions | None = None,
        events: TransferEvents | None = None,
    ) -> None:
        self.session = session
        self.dest_registry = dest_registry or RegistryOptions()
        self.options = options or SyncOptions()
        self.events = image_events(events)

    def sync(self, item: SyncItem) -> ImageResult:
        """Sync one image (and its referrers); a failure is returned, not raised."""
        started = time.monotonic()
        name = str(item.source)
        self.events.on_image_start(name)
        try:
            result = self._sync(item, name)
        except BaleError as exc:
            result = ImageResult(
                source=name,
                status="failed",
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            ).after_signal()
        result.seconds = round(time.monotonic() - started, 3)
        self.events.on_image_done(result)
        return result

    def _sync(self, item: SyncItem, name: str) -> ImageResult:
        options = self.options
        source = RegistrySource(
            self.session.client(item.source.registry, item.registry), item.source
        )
        client = self.session.client(item.dest.registry, self.dest_registry)
        whole = options.all_platforms or item.is_referrer_tag
        platform = None if whole else (options.platform or DEFAULT_PLATFORM)
        recompress = options.compress if not item.is_referrer_tag else None
        image: ImageSource = source
        if recompress is not None:
            image = recompress.wrap(
                source, platform=platform, all_platforms=whole, jobs=self.session.transfer.jobs
            )
        with ThreadPoolExecutor(2, thread_name_prefix="bale-lookup") as side:
            if recompress is None:
                # The destination's HEAD goes out with the source's GET: each is its registry's
                # first request of the run (after an https probe when TLS checks are off).
                theirs = side.submit(_dest_digest, client, item.dest)
                top = source.manifest()  # should this fail, the HEAD's answer is not wanted
                digest = _written_digest(source, top, platform, whole)
                up_to_date = theirs.result() == digest
            else:
                top = source.manifest()
                digest = None
                up_to_date = _same_configs(source, top, platform, whole, client, item.dest)
            status = "skipped" if up_to_date else "planned" if options.dry_run else "copied"
            lookup: Future[Lookup] | None = None
            if options.referrers and recompress is None and not options.dry_run:
                # Referrers are only read until the image is written: found while it is copied.
                assert digest is not None
                lookup = side.submit(_look_up, source, top, digest, self.session)
            downloaded = uploaded = skipped = 0
            if status == "copied":
                dest = RegistryDestination(client, item.dest)
                stats = copy_image(
                    image,
                    dest,
                    session=self.session,
                    platform=platform,
                    all_platforms=whole,
                    tag=item.dest.tag,
                    events=self.events,
                )
                downloaded, uploaded, skipped = (
                    stats.bytes_read,
                    stats.bytes_uploaded,
                    stats.bytes_skipped,
                )
                if stats.digest != digest:  # the copy read another top: look for its referrers
                    digest = stats.digest
                    if lookup is not None:
                        lookup = side.submit(_look_up, source, top, digest, self.session)
            if lookup is not None:
                target = RegistryRepo(client, item.dest)
                found = copy_looked_up(lookup.result(), target, self.session)
                downloaded += found.bytes_read
                uploaded += found.bytes_uploaded
        return ImageResult(
            source=name,
            status=status,  # type: ignore[arg-type]
            digest=digest,
            bytes_downloaded=downloaded,
            bytes_uploaded=uploaded,
            bytes_already_stored=skipped,
            destination=f"docker://{item.dest}",
        )


def _written_digest(
    source: ImageSource, top: RawManifest, platform: Platform | None, whole: bool
) -> str:
    """The digest the copy engine will write for this source (the chosen image of an index
    unless the index is copied whole)."""
    parsed = top.parse()
    if whole or not isinstance(parsed, ImageIndex):
        return top.digest
    return select_platforms(parsed, platform, what=str(source.reference))[0].digest


def _look_up(source: ImageSource, top: RawManifest, digest: str, session: Session) -> Lookup:
    """The referrers of the manifests a copy writes as `digest` (`top` itself, or an image of
    the index `top`), as `written_subjects` names them without reading `top` again."""
    raw = top if top.digest == digest else source.manifest(digest)
    return look_up_referrers(source, manifest_digests(source, raw), session)


def _dest_digest(client: RegistryClient, ref: Reference) -> str | None:
    return pusher_for(client).manifest_digest(ref.repository, ref.identifier)


def _same_configs(
    source: ImageSource,
    top: RawManifest,
    platform: Platform | None,
    whole: bool,
    client: RegistryClient,
    dest: Reference,
) -> bool:
    """With recompression: whether the destination already holds this image recompressed,
    i.e. the same configs (recompression keeps them) and zstd layers only."""
    try:
        theirs = client.get_manifest(dest.repository, dest.identifier)
    except NotFound:
        return False
    wanted = sorted(_configs(source, top, platform, whole) or ())  # None only with zstd_only
    held = _configs(RegistrySource(client, dest), theirs, None, True, zstd_only=True)
    return held is not None and sorted(held) == wanted


def _configs(
    source: ImageSource,
    top: RawManifest,
    platform: Platform | None,
    whole: bool,
    *,
    zstd_only: bool = False,
) -> list[str] | None:
    parsed = top.parse()
    if isinstance(parsed, ImageManifest):
        if zstd_only and any(layer.media_type != OCI_LAYER_ZSTD for layer in parsed.layers):
            return None
        return [parsed.config.digest]
    if not isinstance(parsed, ImageIndex):
        return None
    if not whole:
        chosen = select_platforms(parsed, platform, what=str(source.reference))[0]
        return _configs(source, source.manifest(chosen.digest), None, True, zstd_only=zstd_only)
    out: list[str] = []
    for desc in parsed.manifests:
        child = _configs(source, source.manifest(desc.digest), None, True, zstd_only=zstd_only)
        if child is None:
            return None
        out.extend(child)
    return out
