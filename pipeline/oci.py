"""Media types, descriptors and manifests: the typed vocabulary every transport shares.

Manifests are kept as the exact bytes a registry served (their digest is over those bytes);
the parsed view here is only for reading fields. Nothing is re-serialised on the way through.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

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
    """Docker schema1: readable for inspect, never archived."""

    media_type: str
    data: dict[str, Any] = field(hash=False, compare=False)


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
