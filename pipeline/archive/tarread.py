"""Read image tars (docker-archive, oci-archive, bale's dual format) by their headers.

A tar is read through a random-access source (`read_at(offset, length)`): a local file, or
an object in the store through ranged reads. Only headers and small JSON members are read up
front; a blob is a byte range of the tar, opened when it is copied. A pipe cannot seek, and
docker-archive's `manifest.json` may come after the layers it names, so stdin is not a source
(spooling it to local disk is what bale never does).

Formats understood:
- an OCI image layout (`oci-layout` + `index.json` + `blobs/<alg>/<hex>`): skopeo's
  oci-archive, Docker 25+ `docker save`, and bale's own tars. Manifests come out as the exact
  bytes in the tar, so digests are preserved.
- docker-archive by `manifest.json` alone: `docker save` before 25 (`<id>/layer.tar`,
  `<id>.json`, symlinked duplicate layers) and skopeo's writer (`<diffid>.tar` plus legacy
  `<id>/layer.tar` symlinks). There the manifest is synthesised from the config and the layer
  files as stored; see `_synthesise_manifest` for digests and media types.

Names are checked before anything is used: an absolute path, a `..` component, or a link that
resolves outside the archive makes the whole archive InvalidArchive.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.compression import MAGIC_LEN, detect_compression
from pipeline.errors import DigestMismatch, InvalidArchive, InvalidReference, ManifestError
from pipeline.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    ImageIndex,
    RawManifest,
    sha256_digest,
    verify_digest,
    walk_manifests,
)
from pipeline.refs import Reference, is_valid_digest
from pipeline.store.base import ObjectStore, Readable
from pipeline.transfer.digest_stream import VerifyingReader

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
"""Docker schema2's uncompressed layer type, as `docker save` layers are."""

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

BLOCK = 512
MAX_JSON_BYTES = 16 * 1024 * 1024
"""`manifest.json` and `index.json` larger than this are refused (a tar of many images is
still far below it)."""
_MAX_LINK_HOPS = 16
_WINDOW = 64 * 1024


# --- random-access sources -------------------------------------------------------------------


class RandomAccess(Protocol):
    """Bytes that can be read at any offset: what a tar index needs."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...


class FileSource:
    """A local file, read with `pread` (safe to share between threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise InvalidArchive(f"cannot open archive {self.path}: {exc.strerror}") from None
        self.size = os.fstat(self._fd).st_size

    def read_at(self, offset: int, length: int) -> bytes:
        parts = []
        while length > 0:
            data = os.pread(self._fd, length, offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
            length -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesSource:
    """An archive already in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.size = len(data)

    def read_at(self, offset: int, length: int) -> bytes:
        return bytes(self._data[offset : offset + length])


class StoreSource:
    """An object in the store, read by ranges (only headers and the wanted blobs are fetched)."""

    def __init__(self, store: ObjectStore, key: str, size: int | None = None) -> None:
        self.store = store
        self.key = key
        if size is None:
            info = store.head(key)
            if info is None:
                raise InvalidArchive(f"no archive at {store.url} key {key}")
            size = info.size
        self.size = size

    def read_at(self, offset: int, length: int) -> bytes:
        length = min(length, self.size - offset)
        if length <= 0:
            return b""
        return self.store.read(self.key, offset, length)


class _Window:
    """Read-ahead over a source: consecutive headers and small members cost one read."""

    def __init__(self, source: RandomAccess, window: int = _WINDOW) -> None:
        self.source = source
        self.window = window
        self._start = 0
        self._buf = b""

    def read(self, offset: int, length: int) -> bytes:
        end = offset + length
        if end > self.source.size:
            raise InvalidArchive(
                f"archive is truncated: needs bytes up to {end}, has {self.source.size}"
            )
        if self._start <= offset and end <= self._start + len(self._buf):
            return self._buf[offset - self._start : end - self._start]
        if length >= self.window:
            data = self.source.read_at(offset, length)
        else:
            self._buf = self.source.read_at(offset, min(self.window, self.source.size - offset))
            self._start = offset
            data = self._buf[:length]
        if len(data) != length:
            raise InvalidArchive(f"archive is truncated at offset {offset + len(data)}")
        return data


class RangeReader:
    """A `Readable` over `length` bytes of a source from `offset`."""

    def __init__(self, source: RandomAccess, offset: int, length: int) -> None:
        self._source = source
        self._pos = offset
        self._end = offset + length

    def read(self, n: int = -1, /) -> bytes:
        left = self._end - self._pos
        if left <= 0:
            return b""
        want = left if n is None or n < 0 else min(n, left)
        data = self._source.read_at(self._pos, want)
        if not data:
            raise InvalidArchive(f"archive is truncated at offset {self._pos}")
        self._pos += len(data)
        return data


# --- tar headers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TarMember:
    """One entry of the tar: where its data starts and how long it is."""

    name: str
    offset: int
    size: int
    kind: str
    """`file`, `dir`, `symlink`, `hardlink` or `other` (devices, fifos, sparse files)."""
    linkname: str | None = None
    """For a link: the archive path it resolves to (already made absolute within the tar)."""


_KINDS = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",
    b"1": "hardlink",
    b"2": "symlink",
    b"5": "dir",
}


def _field(block: bytes, start: int, end: int) -> bytes:
    return block[start:end].split(b"\0", 1)[0]


def parse_number(raw: bytes) -> int:
    """A ustar numeric field: octal text, or GNU base-256 when the high bit is set."""
    if raw and raw[0] & 0x80:
        if raw[0] == 0xFF:
            raise InvalidArchive("tar header has a negative number")
        return int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InvalidArchive(f"tar header has a bad number {text!r}") from None


def _check_checksum(block: bytes) -> None:
    try:
        stored = parse_number(block[148:156])
    except InvalidArchive:
        stored = -1
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    if stored not in (unsigned, signed):
        raise InvalidArchive("tar header checksum mismatch (not a tar, or corrupt)")


def _parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise InvalidArchive("tar PAX header is malformed") from None
        if length <= 0 or pos + length > len(data):
            raise InvalidArchive("tar PAX header is malformed")
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def clean_name(name: str) -> str:
    """The archive path of a member: `./` and trailing `/` dropped; `..` or `/...` refused."""
    if name.startswith("/"):
        raise InvalidArchive(f"archive member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArchive(f"archive member {name!r} escapes the archive with '..'")
    return "/".join(parts)


def _resolve_symlink(name: str, target: str) -> str:
    """Where a symlink at `name` points, as an archive path; outside the archive is refused."""
    if target.startswith("/"):
        raise InvalidArchive(f"archive symlink {name!r} points to an absolute path {target!r}")
    parts: list[str] = name.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidArchive(f"archive symlink {name!r} points outside the archive")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def index_tar(source: RandomAccess) -> dict[str, TarMember]:
    """Every member of the tar by cleaned name (a later duplicate wins, as on extraction)."""
    window = _Window(source)
    members: dict[str, TarMember] = {}
    offset = 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    while offset + BLOCK <= source.size:
        block = window.read(offset, BLOCK)
        if block == bytes(BLOCK):
            break
        _check_checksum(block)
        typeflag = block[156:157]
        size = parse_number(block[124:136])
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise InvalidArchive("tar PAX size is not a number") from None
        data_offset = offset + BLOCK
        if size < 0 or data_offset + size > source.size:
            raise InvalidArchive(
                f"archive is truncated: a member needs {size} bytes at offset {data_offset}"
            )
        offset = data_offset + size + (-size % BLOCK)
        if typeflag in (b"x", b"L", b"K", b"g"):
            if size > MAX_JSON_BYTES:
                raise InvalidArchive(f"tar extended header of {size} bytes is too large")
            data = window.read(data_offset, size)
            if typeflag == b"x":
                pax = _parse_pax(data)
            elif typeflag == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif typeflag == b"K":
                long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue  # a global header ('g') changes nothing bale reads
        raw_name = _field(block, 0, 100).decode("utf-8", "surrogateescape")
        magic = block[257:263]
        if magic == b"ustar\0":
            prefix = _field(block, 345, 500).decode("utf-8", "surrogateescape")
            if prefix:
                raw_name = f"{prefix}/{raw_name}"
        raw_link = _field(block, 157, 257).decode("utf-8", "surrogateescape")
        raw_name = pax.get("path", long_name if long_name is not None else raw_name)
        raw_link = pax.get("linkpath", long_link if long_link is not None else raw_link)
        pax, long_name, long_link = {}, None, None

        name = clean_name(raw_name)
        kind = _KINDS.get(typeflag, "other")
        linkname: str | None = None
        if kind == "symlink":
            linkname = _resolve_symlink(name, raw_link)
        elif kind == "hardlink":
            linkname = clean_name(raw_link)
        if not name:
            continue  # the archive root itself (`./`)
        members[name] = TarMember(name, data_offset, size, kind, linkname)
    return members


class TarIndex:
    """A tar's members, with links followed and small members read on demand."""

    def __init__(self, source: RandomAccess) -> None:
        self.source = source
        self.members = index_tar(source)

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except InvalidArchive:
            return False
        return True

    def resolve(self, name: str) -> TarMember:
        """The regular file `name` names, following symlinks and hard links."""
        wanted = clean_name(name)
        current = wanted
        for _ in range(_MAX_LINK_HOPS):
            member = self.members.get(current)
            if member is None:
                raise InvalidArchive(f"archive has no member {wanted!r}")
            if member.kind == "file":
                return member
            if member.kind in ("symlink", "hardlink") and member.linkname is not None:
                current = member.linkname
                continue
            raise InvalidArchive(f"archive member {wanted!r} is not a regular file")
        raise InvalidArchive(f"archive member {wanted!r}: too many levels of links")

    def read(self, name: str, limit: int = MAX_JSON_BYTES) -> bytes:
        member = self.resolve(name)
        if member.size > limit:
            raise InvalidArchive(f"archive member {name!r} is {member.size} bytes, over {limit}")
        data = self.source.read_at(member.offset, member.size)
        if len(data) != member.size:
            raise InvalidArchive(f"archive member {name!r} is truncated")
        return data

    def open(self, name: str) -> RangeReader:
        member = self.resolve(name)
        return RangeReader(self.source, member.offset, member.size)


# --- images in the archive -------------------------------------------------------------------


def _load_json(tar: TarIndex, name: str, limit: int = MAX_JSON_BYTES) -> Any:
    try:
        return json.loads(tar.read(name, limit))
    except (ValueError, UnicodeDecodeError):
        raise InvalidArchive(f"archive member {name} is not valid JSON") from None


def _verify(data: bytes, digest: str) -> None:
    """A blob read from the archive must match its digest; a mismatch is a corrupt archive."""
    try:
        verify_digest(data, digest, f"archive blob {digest}")
    except DigestMismatch as exc:
        raise InvalidArchive(str(exc)) from None


def _blob_name(digest: str) -> str:
    algorithm, hex_ = digest.split(":", 1)
    return f"blobs/{algorithm}/{hex_}"


def _same_name(a: str, b: str) -> bool:
    """Names match literally, or as references once normalised the way skopeo's docker-archive
    does (`nginx` = `docker.io/library/nginx:latest`)."""
    if a == b:
        return True
    try:
        return str(Reference.parse(a)) == str(Reference.parse(b))
    except InvalidReference:
        return False


@dataclass(frozen=True)
class DockerItem:
    """One entry of a docker-archive `manifest.json`."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


@dataclass(frozen=True)
class ArchiveEntry:
    """One image the archive offers: an index.json entry, or a manifest.json item."""

    position: int
    names: tuple[str, ...]
    """RepoTags, `io.containerd.image.name`, `org.opencontainers.image.ref.name`."""
    descriptor: Descriptor | None = None
    """The index.json descriptor (OCI layout); None when only manifest.json describes it."""
    docker: DockerItem | None = None


def _parse_docker_items(data: Any) -> list[DockerItem]:
    if not isinstance(data, list):
        raise InvalidArchive("manifest.json is not a list")
    items = []
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise InvalidArchive(f"manifest.json item {i} is not an object")
        config, tags, layers = obj.get("Config"), obj.get("RepoTags") or [], obj.get("Layers")
        if not isinstance(config, str) or not isinstance(layers, list):
            raise InvalidArchive(f"manifest.json item {i} lacks Config or Layers")
        if not all(isinstance(x, str) for x in layers) or not isinstance(tags, list):
            raise InvalidArchive(f"manifest.json item {i} has malformed Layers or RepoTags")
        items.append(DockerItem(config, tuple(str(t) for t in tags), tuple(layers)))
    return items


class ImageArchive:
    """An image tar: which images it holds, and each one as a source of manifests and blobs."""

    def __init__(self, source: RandomAccess, tar: TarIndex | None = None) -> None:
        """`tar`: the source's member index when the caller has built it already."""
        self.source = source
        self.tar = tar if tar is not None else TarIndex(source)
        self._manifests: dict[str, RawManifest] = {}
        self.docker_items: list[DockerItem] = []
        if "manifest.json" in self.tar:
            self.docker_items = _parse_docker_items(_load_json(self.tar, "manifest.json"))
        self.is_oci = "oci-layout" in self.tar and "index.json" in self.tar
        if self.is_oci:
            self._check_layout()
            self.entries = self._oci_entries()
        elif self.docker_items:
            self.entries = tuple(
                ArchiveEntry(i, item.repo_tags, docker=item)
                for i, item in enumerate(self.docker_items)
            )
        else:
            raise InvalidArchive(
                "archive has neither an OCI layout (oci-layout, index.json) nor a manifest.json"
            )

    @property
    def format(self) -> str:
        """`oci` when the archive is an OCI layout (exact manifests), else `docker`."""
        return "oci" if self.is_oci else "docker"

    def _check_layout(self) -> None:
        layout = _load_json(self.tar, "oci-layout", 64 * 1024)
        if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
            raise InvalidArchive("oci-layout has no imageLayoutVersion")

    def _oci_entries(self) -> tuple[ArchiveEntry, ...]:
        index = _load_json(self.tar, "index.json")
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise InvalidArchive("index.json has no manifests list")
        try:
            descs = [Descriptor.from_json(d, "index.json") for d in index["manifests"]]
        except ManifestError as exc:
            raise InvalidArchive(str(exc)) from None
        # manifest.json (Docker 25+, bale) adds RepoTags: match its items to entries by config.
        tags_by_config: dict[str, list[str]] = {}
        for item in self.docker_items:
            parts = item.config.split("/")
            if (
                len(parts) == 3
                and parts[0] == "blobs"
                and is_valid_digest(f"{parts[1]}:{parts[2]}")
            ):
                tags_by_config.setdefault(f"{parts[1]}:{parts[2]}", []).extend(item.repo_tags)
        entries = []
        for i, desc in enumerate(descs):
            names = []
            for key in (ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME):
                value = desc.annotations.get(key)
                if value:
                    names.append(value)
            if tags_by_config:
                for config in self._configs_under(desc):
                    names.extend(tags_by_config.get(config, []))
            entries.append(ArchiveEntry(i, tuple(dict.fromkeys(names)), descriptor=desc))
        return tuple(entries)

    def _configs_under(self, desc: Descriptor) -> list[str]:
        """Config digests of the image(s) an index.json entry reaches (missing or unreadable
        ones, and indexes nested too deep, skipped)."""
        graph = walk_manifests([desc], self._manifest_or_none, too_deep="skip", missing="skip")
        return [image.config.digest for _, image in graph.images()]

    def _manifest_or_none(self, digest: str, listed: Descriptor | None) -> RawManifest | None:
        """The layout's manifest `listed` names, or None when it is absent or unreadable."""
        if listed is None or _blob_name(digest) not in self.tar:
            return None
        try:
            raw = self.read_manifest(listed)
            raw.parse()
        except (InvalidArchive, ManifestError):
            return None
        return raw

    def read_manifest(self, desc: Descriptor) -> RawManifest:
        """A manifest blob of the layout, checked against its descriptor (read once)."""
        held = self._manifests.get(desc.digest)
        if held is not None and len(held.data) == desc.size:
            return held
        data = self.read_blob_bytes(desc, MAX_MANIFEST_BYTES)
        media_type = desc.media_type or None
        try:
            raw = RawManifest.from_bytes(data, media_type)
        except ManifestError as exc:
            raise InvalidArchive(f"archive manifest {desc.digest}: {exc}") from None
        self._manifests[desc.digest] = raw
        return raw

    def read_blob_bytes(self, desc: Descriptor, limit: int) -> bytes:
        name = _blob_name(desc.digest)
        if name not in self.tar:
            raise InvalidArchive(f"archive is missing blob {desc.digest}")
        data = self.tar.read(name, limit)
        if len(data) != desc.size:
            raise InvalidArchive(
                f"archive blob {desc.digest} is {len(data)} bytes, expected {desc.size}"
            )
        _verify(data, desc.digest)
        return data

    def image(self, name: str | None = None, *, position: int | None = None) -> ArchiveImage:
        """One image: by name (RepoTag, annotation, or a reference that normalises to one),
        by position (skopeo's `@N`), or the only one when neither is given."""
        if position is not None:
            if not 0 <= position < len(self.entries):
                raise InvalidArchive(
                    f"archive has {len(self.entries)} images, no image at position {position}"
                )
            return ArchiveImage(self, self.entries[position])
        if name is None:
            if len(self.entries) != 1:
                raise InvalidArchive(f"archive holds {len(self.entries)} images: name one (or @N)")
            return ArchiveImage(self, self.entries[0])
        hits = [e for e in self.entries if any(_same_name(n, name) for n in e.names)]
        if not hits:
            raise InvalidArchive(f"archive has no image named {name!r}")
        return ArchiveImage(self, hits[0])


@dataclass
class ArchiveImage:
    """One image of an archive as a source: exact manifests and blob byte ranges.

    It has the shape of `pipeline.image.ImageSource` (`manifest`, `blob`, `open_blob`), so the
    same copy engine reads it as it reads a registry or the store.
    """

    archive: ImageArchive
    entry: ArchiveEntry
    _top: RawManifest | None = field(default=None, init=False, repr=False)
    _docker_blobs: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        return self.entry.names

    @property
    def reference(self) -> Reference | None:
        """The first name that parses as a full reference (a bare tag annotation does not)."""
        refs = self.references
        return refs[0] if refs else None

    @property
    def references(self) -> list[Reference]:
        """Every name that parses as a full reference, each once (RepoTags and annotations
        often repeat one name)."""
        found: dict[str, Reference] = {}
        for name in self.entry.names:
            if "/" not in name and ":" not in name:
                continue
            try:
                ref = Reference.parse(name, default_tag=None)
            except InvalidReference:
                continue
            found.setdefault(str(ref), ref)
        return list(found.values())

    def manifest(self, digest: str | None = None) -> RawManifest:
        """The image's top manifest (`digest=None`), or a child of its index by digest."""
        if self._top is None:
            if self.entry.descriptor is not None:
                self._top = self.archive.read_manifest(self.entry.descriptor)
            else:
                assert self.entry.docker is not None
                self._top = self._synthesise_manifest(self.entry.docker)
        if digest is None or digest == self._top.digest:
            return self._top
        desc = self._find_manifest(digest)
        if desc is None:
            raise InvalidArchive(f"archive image has no manifest {digest}")
        return self.archive.read_manifest(desc)

    def _find_manifest(self, digest: str) -> Descriptor | None:
        """The descriptor of `digest` anywhere under the top index (nested indexes too)."""

        def fetch(child: str, listed: Descriptor | None) -> RawManifest:
            return self.manifest() if listed is None else self.archive.read_manifest(listed)

        graph = walk_manifests(
            [self.manifest()], fetch, max_depth=None, follow=lambda d: d.media_type in INDEX_TYPES
        )
        for node in graph.nodes:
            if isinstance(node.manifest, ImageIndex):
                for child in node.manifest.manifests:
                    if child.digest == digest:
                        return child
        return None

    def blob(self, descriptor: Descriptor) -> bytes:
        """A small blob (a config), verified."""
        member = self._member_of(descriptor)
        if member.size > MAX_MANIFEST_BYTES:
            raise InvalidArchive(f"archive blob {descriptor.digest} is too large to read whole")
        data = self.archive.source.read_at(member.offset, member.size)
        _verify(data, descriptor.digest)
        return data

    def _member_of(self, descriptor: Descriptor) -> TarMember:
        self.manifest()
        name = self._docker_blobs.get(descriptor.digest) or _blob_name(descriptor.digest)
        try:
            member = self.archive.tar.resolve(name)
        except InvalidArchive:
            raise InvalidArchive(f"archive is missing blob {descriptor.digest}") from None
        if member.size != descriptor.size:
            raise InvalidArchive(
                f"archive blob {descriptor.digest} is {member.size} bytes, "
                f"expected {descriptor.size}"
            )
        return member

    def open_blob(self, descriptor: Descriptor) -> Readable:
        """A verified stream of the blob's bytes: the read reaching its end checks the digest."""
        member = self._member_of(descriptor)
        return VerifyingReader(
            RangeReader(self.archive.source, member.offset, member.size),
            descriptor.digest,
            descriptor.size,
            what=f"archive blob {descriptor.digest}",
        )

    def blob_range(self, descriptor: Descriptor) -> tuple[int, int]:
        """`(offset, size)` of the blob's bytes inside the tar (for ranged copies in place)."""
        member = self._member_of(descriptor)
        return member.offset, member.size

    def missing_blobs(self) -> list[str]:
        """Digests referenced under this image that the archive lacks (empty when complete)."""

        def fetch(digest: str, listed: Descriptor | None) -> RawManifest | None:
            try:
                return self.manifest(digest if listed is not None else None)
            except InvalidArchive:
                return None

        graph = walk_manifests([self.manifest()], fetch, max_depth=None, missing="report")
        missing = [digest for digest, _, _ in graph.missing]
        for _, image in graph.images():
            for desc in image.blobs:
                try:
                    self._member_of(desc)
                except InvalidArchive:
                    missing.append(desc.digest)
        return list(dict.fromkeys(missing))

    def check(self) -> None:
        """Raise InvalidArchive naming the blobs the archive lacks, if any."""
        missing = self.missing_blobs()
        if missing:
            shown = ", ".join(missing[:3]) + (
                f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            )
            raise InvalidArchive(f"archive is missing {len(missing)} blob(s): {shown}")

    # -- docker-archive without an OCI layout ----------------------------------------------

    def _synthesise_manifest(self, item: DockerItem) -> RawManifest:
        """A manifest for a `manifest.json` item, over the layer files exactly as stored.

        skopeo's reader decompresses layers and names them by diff_id; bale keeps the bytes as
        they are, so a layer's digest is the digest of its file. An uncompressed layer's file
        *is* the tar its diff_id hashes, so the config's diff_id is its digest (the stream is
        verified when copied); a compressed layer is hashed once here. Layer types follow
        Docker schema2 (`...rootfs.diff.tar.gzip`, `...rootfs.diff.tar`); a zstd layer has no
        Docker type, so an image with one becomes an OCI manifest. bzip2 and xz, which
        `docker load` accepts, have no registry media type at all and are refused.
        """
        config_bytes = self.archive.tar.read(item.config, MAX_MANIFEST_BYTES)
        config_digest = sha256_digest(config_bytes)
        try:
            config = json.loads(config_bytes)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArchive(f"archive config {item.config} is not valid JSON") from None
        diff_ids = (
            (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
        )
        if not isinstance(diff_ids, list) or len(diff_ids) != len(item.layers):
            raise InvalidArchive(
                f"archive config {item.config} lists {len(diff_ids or [])} diff_ids for "
                f"{len(item.layers)} layers"
            )
        self._docker_blobs[config_digest] = item.config
        layers: list[tuple[str, str, int]] = []
        for path, diff_id in zip(item.layers, diff_ids, strict=True):
            member = self.archive.tar.resolve(path)
            head = self.archive.source.read_at(member.offset, min(member.size, MAGIC_LEN))
            compression = detect_compression(head)
            if compression in ("bzip2", "xz"):
                raise InvalidArchive(
                    f"archive layer {path} is {compression}-compressed: registries have no "
                    "media type for it"
                )
            if compression == "none":
                if not isinstance(diff_id, str) or not is_valid_digest(diff_id):
                    raise InvalidArchive(f"archive config {item.config} has a bad diff_id")
                digest = diff_id
            else:
                digest = self._hash_member(member)
            self._docker_blobs.setdefault(digest, path)
            layers.append((compression, digest, member.size))
        oci = any(c == "zstd" for c, _, _ in layers)
        if oci:
            types = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}
            media_type, config_type = OCI_MANIFEST, OCI_CONFIG
        else:
            types = {"gzip": DOCKER_LAYER_GZIP, "none": DOCKER_LAYER}
            media_type, config_type = DOCKER_MANIFEST, DOCKER_CONFIG
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": config_type,
                "size": len(config_bytes),
                "digest": config_digest,
            },
            "layers": [
                {"mediaType": types[c], "size": size, "digest": digest}
                for c, digest, size in layers
            ],
        }
        data = json.dumps(manifest, separators=(",", ":")).encode()
        return RawManifest(data=data, media_type=media_type, digest=sha256_digest(data))

    def _hash_member(self, member: TarMember) -> str:
        hasher = hashlib.sha256()
        reader = RangeReader(self.archive.source, member.offset, member.size)
        while chunk := reader.read(1 << 20):
            hasher.update(chunk)
        return "sha256:" + hasher.hexdigest()
