"""`bale restore`: archived images back into a registry, every digest unchanged.

The bucket holds each image's exact manifest bytes and blobs, so a restore is the copy engine
with the bucket (`BucketImage`) as its source: blobs stream from the store to the registry
(what the registry has is skipped, what the same registry holds in the image's original
repository is mounted), then the manifests as stored, children before the index, then the tag.
An image archived with all its platforms comes back as the whole index; one archived for a
single platform comes back as that platform's manifest (what the bucket's tag points at).
Archived signatures and attestations follow their image (`ops/referrers.py`), unless layers
are recompressed (`--dest-compress-format`: new digests, which the old signatures do not name).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipeline.archive.bucket import ArchiveBucket
from pipeline.copy.engine import copy_image
from pipeline.copy.events import image_events
from pipeline.copy.result import ImageResult
from pipeline.copy.session import RegistryOptions, Session
from pipeline.errors import BaleError, StoreNotFound, UsageError
from pipeline.image import ImageSource
from pipeline.oci import Platform
from pipeline.ops.referrers import RegistryRepo, artifact_subject, sync_referrers, written_subjects
from pipeline.refs import Reference
from pipeline.registry.destination import RegistryDestination
from pipeline.transfer.progress import TransferEvents
from pipeline.transfer.recompress import CompressOptions


@dataclass(frozen=True)
class RestoreTarget:
    """One image to restore: as it was archived, and where it goes."""

    source: Reference
    dest: Reference
    """Repository, and the tag to write (None: by digest only)."""

    @property
    def tag(self) -> str | None:
        return self.dest.tag


def restore_targets(
    bucket: ArchiveBucket,
    image: Reference,
    dest: Reference,
    *,
    all_tags: bool = False,
    referrers: bool = True,
) -> list[RestoreTarget]:
    """What `bale restore IMAGE DEST [--all-tags]` restores.

    DEST's tag defaults to the archived tag (a digest-only IMAGE is restored by digest).
    With `all_tags`, IMAGE and DEST name repositories and every archived tag comes back.
    """
    if dest.digest is not None:
        raise UsageError(f"restore destination {dest} must be a repository or a tag, not a digest")
    if not all_tags:
        tag = dest.tag or (image.tag if image.digest is None else None)
        return [RestoreTarget(image, dest.with_tag(tag))]
    if image.tag is not None or image.digest is not None:
        raise UsageError(f"--all-tags takes a repository, not {image}")
    if dest.tag is not None:
        raise UsageError(f"--all-tags restores each tag under its own name: drop :{dest.tag}")
    tags = bucket.tags(image.store_repo)
    if referrers:  # signatures and attestations come back with their subject, not as images
        tags = [t for t in tags if artifact_subject(t) is None]
    if not tags:
        raise StoreNotFound(f"no tags of {image.name} are archived in {bucket.url}")
    return [RestoreTarget(image.with_tag(t), dest.with_tag(t)) for t in tags]


class Restorer:
    """Restores images from one bucket, sharing the session's clients, pool and limiter."""

    def __init__(
        self,
        bucket: ArchiveBucket,
        session: Session,
        registry: RegistryOptions | None = None,
        events: TransferEvents | None = None,
        *,
        referrers: bool = True,
        compress: CompressOptions | None = None,
    ) -> None:
        self.bucket = bucket
        self.session = session
        self.registry = registry
        self.events = image_events(events)
        self.referrers = referrers
        """Restore archived signatures and attestations after their image."""
        self.compress = compress
        """Recompress layers (new digests; referrers then stay behind: they name the old)."""

    def restore(self, target: RestoreTarget, platform: Platform | None = None) -> ImageResult:
        """Restore one image; a failure is returned in the result, not raised."""
        started = time.monotonic()
        source = str(target.source)
        self.events.on_image_start(source)
        try:
            client = self.session.client(target.dest.registry, self.registry)
            archived = self.bucket.image(target.source)
            image: ImageSource = archived
            if self.compress is not None:
                image = self.compress.wrap(
                    archived,
                    platform=platform,
                    all_platforms=platform is None,
                    jobs=self.session.transfer.jobs,
                )
            stats = copy_image(
                image,
                RegistryDestination(client, target.dest),
                session=self.session,
                platform=platform,
                tag=target.tag,
                events=self.events,
            )
            if self.referrers and self.compress is None:
                found = sync_referrers(
                    archived,
                    written_subjects(archived, stats.digest),
                    RegistryRepo(client, target.dest),
                    self.session,
                )
                stats.bytes_read += found.bytes_read
                stats.bytes_uploaded += found.bytes_uploaded
            result = ImageResult(
                source=source,
                status="restored",
                digest=stats.digest,
                bytes_downloaded=stats.bytes_read,
                bytes_uploaded=stats.bytes_uploaded,
                bytes_already_stored=stats.bytes_skipped,
                seconds=round(time.monotonic() - started, 3),
                destination=f"docker://{target.dest}",
            )
        except BaleError as exc:
            result = ImageResult(
                source=source,
                status="failed",
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                seconds=round(time.monotonic() - started, 3),
            ).after_signal()
        self.events.on_image_done(result)
        return result
