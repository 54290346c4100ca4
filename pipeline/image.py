"""Images as sources: the one shape every transport produces, and platform selection.

A registry, an archive bucket and a tar each yield the same `ImageSource`; operations
(archive, restore, copy, sync, inspect) resolve it once into a `ResolvedImage` and never ask
which transport it came from. Manifests stay as exact bytes throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pipeline.errors import ManifestError
from pipeline.oci import (
    DEFAULT_PLATFORM,
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    RawManifest,
    Schema1Manifest,
    choose_platform,
    walk_manifests,
)
from pipeline.readable import Readable
from pipeline.refs import Reference


class ImageSource(Protocol):
    """Where an image's manifests and blobs are read from."""

    @property
    def reference(self) -> Reference | None:
        """The image's name; None for an image that has none (a tar entry without RepoTags)."""
        ...

    def manifest(self, digest: str | None = None) -> RawManifest:
        """The top-level manifest (`digest=None`) or a child manifest by digest, exact bytes."""
        ...

    def blob(self, descriptor: Descriptor) -> bytes:
        """A small blob (a config), verified."""
        ...

    def open_blob(self, descriptor: Descriptor) -> Readable:
        """A verified stream of a blob: the read reaching its size fails on a bad digest."""
        ...


class MemoisedTopSource:
    """An `ImageSource` base whose top manifest is read once and remembered: resolve, plan and
    archive each ask for it, and a tag that moves meanwhile must not change the image."""

    def __init__(self, reference: Reference) -> None:
        self._reference = reference
        self._top: RawManifest | None = None

    @property
    def reference(self) -> Reference:
        return self._reference

    def manifest(self, digest: str | None = None) -> RawManifest:
        if digest is not None:
            return self._read_manifest(digest)
        if self._top is None:
            self._top = self._read_top()
        return self._top

    def _read_manifest(self, digest: str) -> RawManifest:
        raise NotImplementedError

    def _read_top(self) -> RawManifest:
        raise NotImplementedError


BlobOutcome = Literal["exists", "mounted", "uploaded"]


@dataclass(frozen=True)
class BlobWrite:
    """What writing one blob to a destination did, and how many bytes went up for it."""

    outcome: BlobOutcome
    sent: int = 0
    """Bytes sent, every attempt counted (0 when the blob was there already or mounted)."""


class ImageDestination(Protocol):
    """Where an image's blobs and manifests are written: the copy engine's other end.

    Contract every implementation honours:
    - `put_blob` leaves a blob the destination already holds alone (outcome `exists`), and
      commits a new one only when all `descriptor.size` bytes arrived and hash to its digest;
      a stream that fails leaves nothing visible. `open_stream` opens the source afresh (a
      failed attempt starts over with a new stream, never a half-read one).
    - `put_manifest` stores the exact bytes under their digest (and `tag` when given), with
      their media type; everything they reference must already be there.
    """

    @property
    def reference(self) -> Reference: ...

    def put_blob(
        self,
        descriptor: Descriptor,
        open_stream: Callable[[], Readable],
        *,
        mount_from: Reference | None = None,
    ) -> BlobWrite:
        """Write a blob unless present; `mount_from` names where the same bytes may already
        live (a repository the destination can link the blob from instead of receiving it)."""
        ...

    def has_manifest(self, digest: str, tag: str | None = None) -> bool:
        """True when the manifest `digest` is there (and `tag` names it, when given)."""
        ...

    def put_manifest(self, raw: RawManifest, tag: str | None = None) -> None: ...


@dataclass(frozen=True)
class PlatformImage:
    """One image manifest, with the platform the index gave it (None for a lone manifest)."""

    raw: RawManifest
    manifest: ImageManifest
    platform: Platform | None


@dataclass(frozen=True)
class ResolvedImage:
    """Everything an operation needs to move an image: manifests as bytes, blobs as descriptors.

    `images` are the platform manifests that will be stored; `selected` is the subset that goes
    into a tar (one platform unless all were asked for). For a lone manifest both hold it.
    """

    reference: Reference | None
    """The source's name for the image (None: it has none, as a tar entry may not)."""
    top: RawManifest
    images: tuple[PlatformImage, ...]
    selected: tuple[PlatformImage, ...]
    index: ImageIndex | None = None
    extra_manifests: tuple[RawManifest, ...] = field(default=())

    @property
    def digest(self) -> str:
        return self.top.digest

    @property
    def is_index(self) -> bool:
        return self.index is not None

    def blobs(self, images: Iterable[PlatformImage] | None = None) -> list[Descriptor]:
        """Config and layer descriptors of `images` (default: all stored), each digest once."""
        seen: dict[str, Descriptor] = {}
        for image in self.images if images is None else images:
            for desc in image.manifest.blobs:
                seen.setdefault(desc.digest, desc)
        return list(seen.values())

    @property
    def platforms(self) -> list[str]:
        return [str(i.platform) for i in self.images if i.platform is not None]


def _describe(ref: Reference | None) -> str:
    return str(ref) if ref is not None else "image"


def select_platforms(index: ImageIndex, wanted: Platform | None, *, what: str) -> list[Descriptor]:
    """The index entries to use: the wanted platform, else linux/amd64, else the only/first.

    Entries without a platform (attestations, signatures stored in an index) are never picked
    as the platform image.
    """
    entries = index.manifests
    if not entries:
        raise ManifestError(f"{what}: index lists no manifests")
    platforms = [
        d.platform if d.platform is not None and d.platform.os != "unknown" else None
        for d in entries
    ]
    if wanted is None:
        position = choose_platform(platforms, [DEFAULT_PLATFORM], fallback=True, unplatformed=True)
    else:
        position = choose_platform(platforms, [wanted])
        if position is None:
            have = ", ".join(str(p) for p in platforms if p) or "none"
            raise ManifestError(f"{what}: no manifest for platform {wanted} (has {have})")
    assert position is not None
    return [entries[position]]


def read_top(
    source: ImageSource, *, what: str, verb: str
) -> tuple[RawManifest, ImageManifest | ImageIndex]:
    """`source`'s top manifest and its parse. Schema1 stops every operation here, in one line
    naming it (`verb`: what it cannot be), since its layers carry no digests to keep."""
    top = source.manifest()
    parsed = top.parse()
    if isinstance(parsed, Schema1Manifest):
        raise ManifestError(
            f"{what}: Docker schema1 manifests cannot be {verb} (push the image again with a "
            "current client to get schema2 or OCI)"
        )
    return top, parsed


def resolve_image(
    source: ImageSource,
    *,
    platform: Platform | None = None,
    all_platforms: bool = False,
    store_all: bool = True,
) -> ResolvedImage:
    """Fetch the top manifest and the child manifests an operation needs.

    For an index: with `store_all` every child is fetched (archive keeps the whole index);
    `selected` is `platform` (or the default) unless `all_platforms`. With `platform` given and
    `store_all=False`, the index is dropped and the result is that platform's manifest alone.
    """
    what = _describe(source.reference)
    top, parsed = read_top(source, what=what, verb="archived")
    if isinstance(parsed, ImageManifest):
        only = PlatformImage(top, parsed, None)
        return ResolvedImage(source.reference, top, (only,), (only,))

    index = parsed
    chosen = {d.digest for d in select_platforms(index, platform, what=what)}
    images: list[PlatformImage] = []
    extra: list[RawManifest] = []
    children = walk_manifests(
        [top],
        lambda digest, _listed: source.manifest(digest),
        max_depth=1,
        too_deep="skip",
        once=False,
        follow=lambda d: all_platforms or store_all or d.digest in chosen,
    )
    for node in children.nodes[1:]:
        if isinstance(node.manifest, ImageManifest):
            assert node.listed_as is not None
            images.append(PlatformImage(node.raw, node.manifest, node.listed_as.platform))
        else:
            # Nested indexes or other artifacts are kept as bytes so the index stays whole.
            extra.append(node.raw)
    if all_platforms:
        selected = tuple(i for i in images if i.platform is not None) or tuple(images)
    else:
        selected = tuple(i for i in images if i.raw.digest in chosen)
    if platform is not None and not store_all:
        return ResolvedImage(source.reference, selected[0].raw, selected, selected)
    return ResolvedImage(source.reference, top, tuple(images), selected, index, tuple(extra))
