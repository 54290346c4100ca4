"""Plan the per-image tar (DESIGN.md "The per-image tar") before writing a byte of it.

The tar is one file that `docker load`/`podman load` (via `manifest.json`), skopeo's
`docker-archive:` and skopeo's `oci-archive:` (via the OCI image layout) all accept. Every blob
goes in byte-for-byte, layers still compressed, so every entry's size is known up front: the
plan knows the tar's exact size and bytes without reading a layer, which is what lets the tar
be streamed with no staging, or composed server-side from blobs already in the store.

Headers are deterministic (mtime fixed, uid/gid 0, no user names): the same image always
gives the same tar bytes, so an archived tar can be re-verified by rebuilding its plan.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from pipeline.errors import ManifestError, TransferError
from pipeline.oci import (
    DEFAULT_PLATFORM,
    DOCKER_CONFIG,
    OCI_CONFIG,
    OCI_INDEX,
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    RawManifest,
    choose_platform,
    digest_hex,
    verify_digest,
    walk_manifests,
)
from pipeline.refs import Reference
from pipeline.store.base import CopyRange, Inline, Readable
from pipeline.transfer.digest_stream import VerifyingReader

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
USTAR_MAX_SIZE = 8**11 - 1
"""The largest size an 11-digit octal ustar field holds (8 GiB - 1); beyond it, a PAX record."""

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REFERENCE_TYPE = "vnd.docker.reference.type"
BLOBS_DIR = "blobs/"

_PAX_NAME = "././@PaxHeader"
_IMAGE_CONFIG_TYPES = frozenset({DOCKER_CONFIG, OCI_CONFIG})

REGULAR = b"0"
DIRECTORY = b"5"
SYMLINK = b"2"
PAX_HEADER = b"x"


# --- tar headers ------------------------------------------------------------------------------


def _octal(value: int, width: int) -> bytes:
    """A NUL-terminated octal field of `width` bytes."""
    digits = f"{value:o}".encode("ascii")
    if len(digits) > width - 1:
        raise ValueError(f"{value} does not fit a {width}-byte octal field")
    return digits.rjust(width - 1, b"0") + b"\0"


def _base256(value: int, width: int) -> bytes:
    """GNU's binary number field: high bit set, big-endian value (readers without PAX use it)."""
    raw = value.to_bytes(width, "big")
    if raw[0] & 0x80:
        raise ValueError(f"{value} does not fit a {width}-byte base-256 field")
    return bytes([raw[0] | 0x80]) + raw[1:]


def _split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    """`(prefix, name)` fitting ustar's 155 + 100 bytes, or None when PAX must carry the path."""
    if len(name) <= 100:
        return b"", name
    # The split must fall on a `/` with at most 155 bytes before and 100 after it.
    for i in range(min(len(name) - 1, 155), 0, -1):
        if name[i : i + 1] == b"/" and len(name) - i - 1 <= 100:
            return name[:i], name[i + 1 :]
    return None


def _ustar_block(
    name: bytes,
    prefix: bytes,
    size_field: bytes,
    *,
    typeflag: bytes,
    mode: int,
    mtime: int,
    linkname: bytes = b"",
) -> bytes:
    header = b"".join(
        [
            name.ljust(100, b"\0"),
            _octal(mode, 8),
            _octal(0, 8),  # uid
            _octal(0, 8),  # gid
            size_field,
            _octal(mtime, 12),
            b" " * 8,  # checksum, computed over these spaces
            typeflag,
            linkname.ljust(100, b"\0"),
            b"ustar\x0000",
            b"\0" * 32,  # uname
            b"\0" * 32,  # gname
            _octal(0, 8),  # devmajor
            _octal(0, 8),  # devminor
            prefix.ljust(155, b"\0"),
            b"\0" * 12,
        ]
    )
    assert len(header) == BLOCK
    checksum = f"{sum(header):06o}".encode("ascii") + b"\0 "
    return header[:148] + checksum + header[156:]


def _pax_record(key: str, value: str) -> bytes:
    """`"<len> key=value\\n"`, where `<len>` counts the whole record including itself."""
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length = len(str(length).encode()) + len(body)
    return str(length).encode() + body


def padding(size: int) -> bytes:
    """Zeros that round `size` up to a whole 512-byte block."""
    return bytes(-size % BLOCK)


def tar_header(
    name: str,
    size: int,
    *,
    typeflag: bytes = REGULAR,
    mode: int = 0o644,
    mtime: int = 0,
    linkname: str = "",
) -> bytes:
    """The header bytes for one entry: a ustar block, preceded by a PAX header when needed.

    PAX (`size`, `path`, `linkpath` records) is used only when ustar cannot say it: a size of
    8 GiB or more, or a name longer than ustar's prefix/name split allows, or non-ASCII. The
    ustar size field then holds the size in base-256 too, for readers that ignore PAX.
    """
    if size < 0:
        raise ValueError(f"negative size for {name!r}")
    raw_name, raw_link = name.encode(), linkname.encode()
    records: list[bytes] = []
    split = _split_ustar_name(raw_name) if raw_name.isascii() else None
    if split is None:
        records.append(_pax_record("path", name))
        split = (b"", raw_name[:100])
    if len(raw_link) > 100 or not raw_link.isascii():
        records.append(_pax_record("linkpath", linkname))
        raw_link = raw_link[:100]
    if size > USTAR_MAX_SIZE:
        records.append(_pax_record("size", str(size)))
        size_field = _base256(size, 12)
    else:
        size_field = _octal(size, 12)
    prefix, short = split
    block = _ustar_block(
        short, prefix, size_field, typeflag=typeflag, mode=mode, mtime=mtime, linkname=raw_link
    )
    if not records:
        return block
    pax = b"".join(records)
    pax_header = _ustar_block(
        _PAX_NAME.encode(), b"", _octal(len(pax), 12), typeflag=PAX_HEADER, mode=0o644, mtime=mtime
    )
    return pax_header + pax + padding(len(pax)) + block


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobSource:
    """Entry data the caller supplies: the bytes of this blob, from a registry or the store."""

    descriptor: Descriptor


@dataclass(frozen=True)
class TarEntry:
    """One member of the tar. `source` is None for a directory."""

    name: str
    size: int
    source: bytes | BlobSource | None

    @property
    def is_dir(self) -> bool:
        return self.source is None

    def header(self, mtime: int) -> bytes:
        if self.is_dir:
            return tar_header(self.name, 0, typeflag=DIRECTORY, mode=0o755, mtime=mtime)
        return tar_header(self.name, self.size, mtime=mtime)


Piece = bytes | BlobSource


@dataclass(frozen=True)
class TarPlan:
    """The whole tar, entry by entry, with nothing read yet."""

    entries: tuple[TarEntry, ...]
    mtime: int = 0
    root: Descriptor | None = None
    """What index.json points at: the image manifest, or the index with all platforms."""
    blobs: tuple[Descriptor, ...] = field(default=())
    """Every blob in the tar once, manifests and indexes included, in tar order."""
    platforms: tuple[str, ...] = field(default=())
    """`os/arch[/variant]` of each image in the tar, as its index lists it (empty for a lone
    manifest: only its config would say)."""

    def pieces(self) -> Iterator[Piece]:
        """The tar's byte stream: inline bytes and the blob ranges the caller fills in."""
        for entry in self.entries:
            yield entry.header(self.mtime)
            if entry.source:  # a directory has none, an empty file nothing to yield
                yield entry.source
            if entry.size and not entry.is_dir:
                pad = padding(entry.size)
                if pad:
                    yield pad
        yield END_OF_ARCHIVE

    @cached_property
    def total_size(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.descriptor.size for p in self.pieces())


def blob_path(digest: str) -> str:
    """A blob's name inside the tar (and in an OCI image layout): `blobs/sha256/<hex>`."""
    algorithm = digest.split(":", 1)[0]
    return f"{BLOBS_DIR}{algorithm}/{digest_hex(digest)}"


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def image_names(ref: Reference) -> tuple[str | None, str]:
    """`(RepoTag, containerd name)`: the tagged full name (None for a digest reference) and the
    name `io.containerd.image.name` carries (`host/repo:tag`, else `host/repo@digest`)."""
    if ref.tag:
        tagged = f"{ref.name}:{ref.tag}"
        return tagged, tagged
    if ref.digest:
        return None, f"{ref.name}@{ref.digest}"
    raise ManifestError(f"image {ref} has neither tag nor digest")


@dataclass
class _Graph:
    """The manifests reachable from the root, each parsed once, in index order."""

    images: list[ImageManifest] = field(default_factory=list)
    runnable: list[tuple[ImageManifest, Platform | None]] = field(default_factory=list)
    """Images a `docker load` can run: not attestations, not other artifacts."""
    platforms: list[str] = field(default_factory=list)
    order: list[RawManifest] = field(default_factory=list)


def _is_runnable(image: ImageManifest, desc: Descriptor | None) -> bool:
    """An image `docker load` can take: buildx attestations (platform unknown/unknown, in-toto
    layers) and artifacts with other config types would fail or mislead it."""
    if image.config.media_type not in _IMAGE_CONFIG_TYPES:
        return False
    if desc is None:
        return True
    if desc.annotations.get(ANNOTATION_REFERENCE_TYPE) == "attestation-manifest":
        return False
    return desc.platform is None or desc.platform.os != "unknown"


def _walk(
    root: RawManifest, available: Mapping[str, RawManifest], root_desc: Descriptor | None
) -> _Graph:
    def fetch(digest: str, listed: Descriptor | None) -> RawManifest:
        found = available.get(digest)
        if found is None:
            raise ManifestError(f"child manifest {digest} was not provided")
        if listed is not None and len(found.data) != listed.size:
            raise ManifestError(
                f"child {digest} is {len(found.data)} bytes, the index says {listed.size}"
            )
        return found

    walked = walk_manifests([root], fetch)
    graph = _Graph()
    for node in walked.nodes:
        graph.order.append(node.raw)
        parsed = node.manifest
        desc = node.listed_as if node.parent is not None else root_desc
        if isinstance(parsed, ImageManifest):
            graph.images.append(parsed)
            plat = desc.platform if desc is not None else None
            if _is_runnable(parsed, desc):
                graph.runnable.append((parsed, plat))
                if plat is not None and str(plat) not in graph.platforms:
                    graph.platforms.append(str(plat))
        elif not isinstance(parsed, ImageIndex):
            raise ManifestError(f"manifest {node.raw.digest}: schema1 images cannot be archived")
    return graph


def plan_image_tar(
    ref: Reference,
    top: RawManifest,
    images: Sequence[RawManifest] = (),
    *,
    all_platforms: bool = False,
    blob_bytes: Mapping[str, bytes] | None = None,
    mtime: int = 0,
) -> TarPlan:
    """Plan the dual-format tar of `ref`.

    `top` is what the reference resolved to. When it is an image manifest, that is the image.
    When it is an index: with `all_platforms`, index.json points at the index itself and
    `images` must hold every manifest it reaches (children, and grandchildren of nested
    indexes); without, `images` is the one selected child, and index.json points at it with
    its platform. `blob_bytes` holds bytes the caller already has (configs, say): those go in
    inline instead of as a `BlobSource`. manifest.json gets one entry per runnable image
    (attestations and other artifacts are left out of it, their blobs still in the layout);
    only one entry carries RepoTags, linux/amd64 when there is one, else the first, since
    two entries with one tag would make `docker load` re-tag.
    """
    available = {m.digest: m for m in images}
    available.setdefault(top.digest, top)
    top_parsed = top.parse()
    listed_desc: Descriptor | None = None
    if isinstance(top_parsed, ImageIndex) and not all_platforms:
        chosen = [m for m in images if m.digest != top.digest]
        if len(chosen) != 1:
            raise ManifestError(
                f"image {ref}: one platform's manifest must be selected, got {len(chosen)}"
            )
        root = chosen[0]
        listed = {d.digest: d for d in top_parsed.manifests}
        if root.digest not in listed:
            raise ManifestError(f"image {ref}: {root.digest} is not listed in {top.digest}")
        listed_desc = listed[root.digest]
    else:
        root = top
    platform = listed_desc.platform if listed_desc is not None else None
    graph = _walk(root, available, listed_desc)
    if not graph.images:
        raise ManifestError(f"image {ref}: no image manifest under {root.digest}")

    tagged, containerd_name = image_names(ref)
    annotations = {ANNOTATION_CONTAINERD_NAME: containerd_name}
    if ref.tag:
        annotations[ANNOTATION_REF_NAME] = ref.tag
    root_desc = Descriptor(
        media_type=root.media_type,
        digest=root.digest,
        size=len(root.data),
        platform=platform,
        annotations=annotations,
    )
    index_json = _dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [root_desc.to_json()]}
    )

    tag_holder = choose_platform([p for _, p in graph.runnable], [DEFAULT_PLATFORM])
    if tag_holder is None:
        tag_holder = 0
    docker_entries = [
        {
            "Config": blob_path(image.config.digest),
            "RepoTags": [tagged] if tagged and i == tag_holder else [],
            "Layers": [blob_path(layer.digest) for layer in image.layers],
        }
        for i, (image, _) in enumerate(graph.runnable)
    ]
    manifest_json = _dumps(docker_entries)

    # Blobs: manifests first, then configs, then layers, so the small metadata sits at the
    # front (a streaming reader meets it first, and composing merges it into one inline piece).
    blob_entries: list[TarEntry] = []
    blobs: list[Descriptor] = []
    seen: dict[str, int] = {}
    held = dict(blob_bytes or {})

    def add(desc: Descriptor, data: bytes | None) -> None:
        if desc.digest in seen:
            if seen[desc.digest] != desc.size:
                raise ManifestError(
                    f"image {ref}: blob {desc.digest} listed with sizes {seen[desc.digest]} "
                    f"and {desc.size}"
                )
            return
        seen[desc.digest] = desc.size
        blobs.append(desc)
        if data is None and desc.digest in held:
            data = held[desc.digest]
            _check_held(desc, data)
        source: bytes | BlobSource = data if data is not None else BlobSource(desc)
        blob_entries.append(TarEntry(blob_path(desc.digest), desc.size, source))

    for raw in graph.order:
        add(Descriptor(raw.media_type, raw.digest, len(raw.data)), raw.data)
    for image in graph.images:
        add(image.config, None)
    for image in graph.images:
        for layer in image.layers:
            add(layer, None)

    algorithms = sorted({d.digest.split(":", 1)[0] for d in blobs})
    entries = [
        TarEntry("oci-layout", len(OCI_LAYOUT), OCI_LAYOUT),
        TarEntry("index.json", len(index_json), index_json),
        TarEntry("manifest.json", len(manifest_json), manifest_json),
        TarEntry(BLOBS_DIR, 0, None),
        *(TarEntry(f"{BLOBS_DIR}{a}/", 0, None) for a in algorithms),
        *blob_entries,
    ]
    return TarPlan(
        entries=tuple(entries),
        mtime=mtime,
        root=root_desc,
        blobs=tuple(blobs),
        platforms=tuple(graph.platforms),
    )


def _check_held(desc: Descriptor, data: bytes) -> None:
    if len(data) != desc.size:
        raise ManifestError(f"bytes given for blob {desc.digest} are not {desc.size} long")
    verify_digest(data, desc.digest, f"bytes given for blob {desc.digest}")


# --- writing ---------------------------------------------------------------------------------


class Sink(Protocol):
    """Anything with `write(bytes)`: a file, a pipe, an upload stream."""

    def write(self, data: bytes, /) -> object: ...


def write_tar(
    plan: TarPlan,
    sink: Sink,
    open_blob: Callable[[Descriptor], Readable],
    *,
    chunk: int = 1 << 20,
    verify: bool = True,
) -> int:
    """Stream the planned tar to `sink`; returns the bytes written (always `plan.total_size`).

    Each blob is read from `open_blob(descriptor)` and must deliver exactly its size; with
    `verify` its digest is checked too (DigestMismatch; pass False when `open_blob` already
    verifies). A short or long blob raises TransferError: the headers already promised its size.
    """
    written = 0
    for piece in plan.pieces():
        if isinstance(piece, bytes):
            sink.write(piece)
            written += len(piece)
            continue
        desc = piece.descriptor
        raw = open_blob(desc)
        reader: Readable = raw
        if verify:
            reader = VerifyingReader(raw, desc.digest, desc.size, what=f"blob {desc.digest}")
        remaining = desc.size
        try:
            while remaining:
                data = reader.read(min(chunk, remaining))
                if not data:
                    raise TransferError(
                        f"blob {desc.digest} ended after {desc.size - remaining} of "
                        f"{desc.size} bytes"
                    )
                sink.write(data)
                remaining -= len(data)
                written += len(data)
            if raw.read(1):
                raise TransferError(f"blob {desc.digest} is longer than its {desc.size} bytes")
        finally:
            close = getattr(raw, "close", None)
            if close is not None:
                close()
    return written


def to_compose_pieces(
    plan: TarPlan, blob_key: Callable[[Descriptor], str]
) -> list[Inline | CopyRange]:
    """The plan as store compose pieces: each blob a whole-object copy, inline bytes merged."""
    out: list[Inline | CopyRange] = []
    pending: list[bytes] = []
    for piece in plan.pieces():
        if isinstance(piece, bytes):
            pending.append(piece)
            continue
        if pending:
            out.append(Inline(b"".join(pending)))
            pending = []
        if piece.descriptor.size:
            out.append(CopyRange(blob_key(piece.descriptor), 0, piece.descriptor.size))
    if pending:
        out.append(Inline(b"".join(pending)))
    return out
