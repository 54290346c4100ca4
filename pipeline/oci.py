"""Media types, descriptors and manifests: the typed vocabulary every transport shares.

Manifests are kept as the exact bytes a registry served (their digest is over those bytes);
the parsed view here is only for reading fields. Nothing is re-serialised on the way through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.errors import DigestMismatch, ManifestError
from pipeline.refs import is_valid_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_TYPES | SCHEMA1_TYPES

# Accept header for manifest requests: every modern type, schema1 last so that a registry
# never downgrades a schema2 image (distribution 2.8.2 rewrites to schema1 without it).
MANIFEST_ACCEPT = ", ".join(
    [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1]
)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Manifests and configs larger than this are refused (distribution's own limit)."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex part of `sha256:<hex>`, after checking the digest is well formed."""
    if not is_valid_digest(digest):
        raise ManifestError(f"invalid digest {digest!r}")
    return digest.split(":", 1)[1]


def verify_digest(data: bytes, digest: str, what: str) -> None:
    algo = digest.split(":", 1)[0]
    actual = f"{algo}:{hashlib.new(algo, data).hexdigest()}"
    if actual != digest:
        raise DigestMismatch(f"{what}: expected {digest}, got {actual}")


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`os/arch[/variant]`, as `--platform` takes it."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Platform:
        return cls(
            os=str(data.get("os", "")),
            architecture=str(data.get("architecture", "")),
            variant=data.get("variant") or None,
            os_version=data.get("os.version") or None,
        )

    def matches(self, wanted: Platform) -> bool:
        """True when this platform satisfies `wanted` (a wanted variant must match)."""
        if (self.os, self.architecture) != (wanted.os, wanted.architecture):
            return False
        return wanted.variant is None or wanted.variant == self.variant

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest") -> Descriptor:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: descriptor is not an object")
        digest, size = data.get("digest"), data.get("size")
        if not isinstance(digest, str) or not is_valid_digest(digest):
            raise ManifestError(f"{where}: descriptor has an invalid digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where}: descriptor {digest} has an invalid size {size!r}")
        platform = data.get("platform")
        return cls(
            media_type=str(data.get("mediaType", "")),
            digest=digest,
            size=size,
            platform=Platform.from_json(platform) if isinstance(platform, dict) else None,
            annotations=dict(data.get("annotations") or {}),
            urls=tuple(data.get("urls") or ()),
            artifact_type=data.get("artifactType"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            p: dict[str, Any] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                p["variant"] = self.platform.variant
            if self.platform.os_version:
                p["os.version"] = self.platform.os_version
            out["platform"] = p
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class ImageManifest:
    """An OCI image manifest or Docker schema2 manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Config first, then layers: every blob this manifest references."""
        return (self.config, *self.layers)


@dataclass(frozen=True)
class ImageIndex:
    """An OCI image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Schema1Manifest:
    """Docker schema1: readable for inspect, never archived. A stock registry sharing a bucket
    can still hold one, so gc and verify read its layers (`fsLayers[].blobSum`)."""

    media_type: str
    data: dict[str, Any] = field(hash=False, compare=False)
    subject: None = None
    """Schema1 has no subject; here so every `Manifest` answers `.subject`."""

    @property
    def layer_digests(self) -> tuple[str, ...]:
        """The layer blobs it names, each once (schema1 lists no sizes, and no config blob)."""
        layers = self.data.get("fsLayers")
        digests = [
            d.get("blobSum")
            for d in (layers if isinstance(layers, list) else ())
            if isinstance(d, dict)
        ]
        return tuple(dict.fromkeys(d for d in digests if isinstance(d, str) and is_valid_digest(d)))


Manifest = ImageManifest | ImageIndex | Schema1Manifest


@dataclass(frozen=True)
class RawManifest:
    """A manifest exactly as served: bytes, media type and the digest of those bytes."""

    data: bytes
    media_type: str
    digest: str

    @classmethod
    def from_bytes(cls, data: bytes, content_type: str | None = None) -> RawManifest:
        return cls(
            data=data, media_type=detect_media_type(data, content_type), digest=sha256_digest(data)
        )

    def parse(self) -> Manifest:
        return parse_manifest(self.data, self.media_type)

    def descriptor(self, platform: Platform | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.data), platform)


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{what} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} byte limit"
        )
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return obj


def detect_media_type(data: bytes, content_type: str | None = None) -> str:
    """The manifest's own `mediaType`, else the Content-Type, else guessed from its shape.

    Older OCI writers omit `mediaType`, so the response header or the structure decides.
    """
    obj = _load_json(data, "manifest")
    media_type = obj.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    ct = (content_type or "").split(";", 1)[0].strip()
    if ct in MANIFEST_TYPES:
        return ct
    if obj.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1_SIGNED if "signatures" in obj else DOCKER_SCHEMA1
    if "manifests" in obj:
        return OCI_INDEX
    if "config" in obj and "layers" in obj:
        return OCI_MANIFEST
    raise ManifestError("manifest has no mediaType and an unrecognised shape")


def parse_manifest(data: bytes, media_type: str) -> Manifest:
    obj = _load_json(data, "manifest")
    subject = obj.get("subject")
    subject_desc = Descriptor.from_json(subject, "subject") if subject else None
    if media_type in SCHEMA1_TYPES:
        return Schema1Manifest(media_type, obj)
    if media_type in INDEX_TYPES:
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise ManifestError("index has no manifests list")
        return ImageIndex(
            media_type=media_type,
            manifests=tuple(Descriptor.from_json(d, "index") for d in manifests),
            subject=subject_desc,
            annotations=dict(obj.get("annotations") or {}),
        )
    if media_type in IMAGE_TYPES or ("config" in obj and "layers" in obj):
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ManifestError("manifest has no layers list")
        return ImageManifest(
            media_type=media_type,
            config=Descriptor.from_json(obj.get("config"), "config"),
            layers=tuple(Descriptor.from_json(d, "layers") for d in layers),
            subject=subject_desc,
            artifact_type=obj.get("artifactType"),
            annotations=dict(obj.get("annotations") or {}),
        )
    raise ManifestError(f"unsupported manifest media type {media_type!r}")


# --- platforms ---------------------------------------------------------------------------------

DEFAULT_PLATFORM = Platform("linux", "amd64")
"""The platform taken from an index when none is asked for (what a registry client on a
typical host pulls)."""


def choose_platform(
    platforms: Sequence[Platform | None],
    wanted: Sequence[Platform],
    *,
    exact_variant: bool = False,
    fallback: bool = False,
    unplatformed: bool = False,
    preferred: Sequence[bool] = (),
) -> int | None:
    """The position of the entry to take among an index's `platforms`, or None.

    The one platform chooser: an entry matching an earlier `wanted` platform wins, then one
    that is `preferred` (skopeo prefers zstd instances), then the earlier position. Matching
    ignores the variant when a wanted platform has none, unless `exact_variant` (skopeo's
    rule, where `wanted` already lists acceptable variants in order). With `fallback`, any
    platformed entry is taken when none matches; with `unplatformed`, entries without a
    platform (None) are taken last, when no platformed one is.
    """
    best: tuple[int, int, int] | None = None
    chosen: int | None = None
    last = len(wanted)
    for position, have in enumerate(platforms):
        if have is None:
            if not unplatformed:
                continue
            rank = last + 1
        else:
            rank = next(
                (
                    i
                    for i, want in enumerate(wanted)
                    if _platform_matches(have, want, exact_variant)
                ),
                last,
            )
            if rank == last and not fallback:
                continue
        prefer = 0 if position < len(preferred) and preferred[position] else 1
        key = (rank, prefer, position)
        if best is None or key < best:
            best, chosen = key, position
    return chosen


def _platform_matches(have: Platform, want: Platform, exact_variant: bool) -> bool:
    if exact_variant:
        return (have.os, have.architecture, have.variant or "") == (
            want.os,
            want.architecture,
            want.variant or "",
        )
    return have.matches(want)


# --- the manifest graph ------------------------------------------------------------------------

MAX_INDEX_DEPTH = 4
"""How deep indexes may nest below the top manifest (an index of indexes of ... images)."""

MissingPolicy = Literal["raise", "skip", "report"]
"""What a walk does with a child manifest it cannot get: raise ManifestError, pass over it, or
pass over it and list it in `ManifestGraph.missing`."""

Fetch = Callable[[str, "Descriptor | None"], "RawManifest | None"]
"""`fetch(digest, listed_as)`: the manifest's bytes, or None when it is not there.
`listed_as` is the descriptor its parent gave it (None for a root named by digest alone)."""

_FetchItem = tuple[str, "Descriptor | None"]
FetchMap = Callable[
    [Callable[[_FetchItem], "RawManifest | None"], list[_FetchItem]], Iterable["RawManifest | None"]
]
"""`map`-shaped: how one index's children are fetched (a thread pool's `map` reads them at once)."""
_Pending = tuple[str, "Descriptor | None", "RawManifest | None", "str | None", int]
"""(digest, listed as, bytes or None when missing, parent digest, depth): a walk's to-do."""


@dataclass(frozen=True)
class GraphNode:
    """One manifest reached by a walk, with how it was reached."""

    raw: RawManifest
    manifest: Manifest
    listed_as: Descriptor | None
    """The descriptor its parent (or the caller, for a root) gave it; None for a bare root."""
    parent: str | None
    depth: int
    """0 for a root; an index's children are one deeper."""


@dataclass
class ManifestGraph:
    """What a walk reached: manifests in depth-first order, root first, children in index order."""

    nodes: list[GraphNode] = field(default_factory=list)
    missing: list[tuple[str, Descriptor | None, str | None]] = field(default_factory=list)
    """(digest, listed as, parent digest) of every manifest that was not there (policy
    `report`); a root has no parent."""

    def images(self) -> Iterator[tuple[GraphNode, ImageManifest]]:
        for node in self.nodes:
            if isinstance(node.manifest, ImageManifest):
                yield node, node.manifest

    def blob_digests(self) -> list[str]:
        """Every non-manifest blob the reached manifests name (configs, layers, schema1
        layers), each once, in walk order."""
        out: dict[str, None] = {}
        for node in self.nodes:
            parsed = node.manifest
            if isinstance(parsed, ImageManifest):
                out.update(dict.fromkeys(d.digest for d in parsed.blobs))
            elif isinstance(parsed, Schema1Manifest):
                out.update(dict.fromkeys(parsed.layer_digests))
        return list(out)


def _serial_map(
    fn: Callable[[_FetchItem], RawManifest | None], items: list[_FetchItem]
) -> list[RawManifest | None]:
    return [fn(item) for item in items]


def child_manifests(parsed: Manifest, *, subjects: bool = False) -> list[Descriptor]:
    """The manifests `parsed` points at: an index's entries, and its subject when asked."""
    children = list(parsed.manifests) if isinstance(parsed, ImageIndex) else []
    if subjects and parsed.subject is not None:
        children.append(parsed.subject)
    return children


def walk_manifests(
    roots: Iterable[RawManifest | Descriptor | str],
    fetch: Fetch,
    *,
    max_depth: int | None = MAX_INDEX_DEPTH,
    too_deep: Literal["raise", "skip"] = "raise",
    missing: MissingPolicy = "raise",
    once: bool = True,
    subjects: bool = False,
    follow: Callable[[Descriptor], bool] | None = None,
    fetch_map: FetchMap | None = None,
) -> ManifestGraph:
    """Walk the manifest graph under `roots`: the one walker every operation uses.

    Roots are manifests in hand, descriptors or bare digests (those are fetched). Children are
    an index's entries (those `follow` accepts, when given) and, with `subjects`, a manifest's
    subject. `max_depth` bounds index nesting (None: no bound); `too_deep` says whether going
    past it raises ManifestError or stops there. With `once` a manifest reached twice is
    visited once. A parse error raises ManifestError: a caller that wants to note and go on
    checks in `fetch` and returns None. `fetch_map` reads one index's children together
    (pass a thread pool's `map`); the order of the walk does not depend on it.
    """
    graph = ManifestGraph()
    seen: set[str] = set()

    def fetched(
        items: list[tuple[str, Descriptor | None]], parent: str | None, depth: int
    ) -> list[_Pending]:
        wanted = [(d, listed) for d, listed in dict(items).items() if not (once and d in seen)]
        mapper = fetch_map or _serial_map
        raws = list(mapper(lambda item: fetch(*item), wanted)) if wanted else []
        got = {d: raw for (d, _), raw in zip(wanted, raws, strict=True)}
        return [(d, listed, got[d], parent, depth) for d, listed in items if d in got]

    given: list[_Pending] = []
    to_fetch: list[tuple[str, Descriptor | None]] = []
    for root in roots:
        if isinstance(root, RawManifest):
            given.append((root.digest, None, root, None, 0))
        elif isinstance(root, Descriptor):
            to_fetch.append((root.digest, root))
        else:
            to_fetch.append((root, None))
    stack = [*given, *fetched(to_fetch, None, 0)]
    stack.reverse()
    while stack:
        digest, listed, raw, parent, depth = stack.pop()
        if once and digest in seen:
            continue
        seen.add(digest)
        if raw is None:
            if missing == "raise":
                where = f"index {parent}: child manifest" if parent else "manifest"
                raise ManifestError(f"{where} {digest} is missing")
            if missing == "report":
                graph.missing.append((digest, listed, parent))
            continue
        parsed = raw.parse()
        graph.nodes.append(GraphNode(raw, parsed, listed, parent, depth))
        children = [
            c for c in child_manifests(parsed, subjects=subjects) if follow is None or follow(c)
        ]
        if not children:
            continue
        if max_depth is not None and depth + 1 > max_depth:
            if too_deep == "raise":
                raise ManifestError(f"manifest {raw.digest}: indexes nested too deep")
            continue
        stack.extend(reversed(fetched([(c.digest, c) for c in children], raw.digest, depth + 1)))
    return graph
