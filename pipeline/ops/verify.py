"""`bale verify`: prove that what the store holds is what its records and tags say it holds.

A bucket can go bad without bale noticing: a disk flips bits, someone edits a key by hand, a
lifecycle rule deletes a blob, a crashed writer leaves a half-finished image. Later archives
would then reuse a corrupt blob (a blob is found by its key and size, never re-hashed), and a
restore would fail far from the cause. verify reads everything back and names each fault once:

    blob-missing       a blob something needs is absent (the key; who needs it)
    blob-corrupt       a blob's bytes do not hash to its digest
    blob-size          a blob's size differs from what a manifest or record says
    link-invalid       a link whose body is not a digest, or names another digest than its path
    link-missing       a link a record's image needs is absent (a registry would not serve it)
    tag-mismatch       a tag points elsewhere than the record of that tag says
    manifest-invalid   a manifest (tagged, linked or recorded) that does not parse
    record-missing     a named image has no record
    record-invalid     a record that does not parse or validate
    tar-missing        a record's tar is absent
    tar-size           a record's tar differs in size from the record
    tar-invalid        a tar whose headers or index.json cannot be read, or name the wrong image
    tar-entry-missing  index.json, manifest.json or a manifest in the tar names an absent entry
    tar-entry-size     a tar entry's size differs from its descriptor
    tar-entry-corrupt  a tar entry's bytes do not hash to the digest in its name
    layer-invalid      (--deep) a layer that does not decompress
    layer-diff-id      (--deep) a layer that decompresses to another digest than its config says

A missing blob is one fault however many links, manifests and records point at it; its detail
names the first of them. An index child that is absent is not a fault by itself: bale stores
only the platforms it was asked for, and the record lists what it stored, so a missing child
the record needs is still found.

An object in an archive storage class (S3 GLACIER/DEEP_ARCHIVE, OSS Archive and colder) that
is not restored cannot be read: it is no fault, it is listed as cold (`cold`, with the `bale
thaw` command for the images that keep it) and left unchecked; once thawed it is read and
hashed like any other. Reads go through the store's ranged reads: a tar is indexed
by its headers, never downloaded whole, and each blob is streamed and hashed off the reading
thread, `jobs` at a time.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.links import parse_link_key
from pipeline.archive.record import ImageRecord
from pipeline.archive.tarread import ImageArchive, StoreSource, TarIndex, TarMember
from pipeline.compression import (
    DECOMPRESS_ERRORS,
    MAGIC_LEN,
    detect_compression,
    open_decompressed,
)
from pipeline.errors import (
    InvalidArchive,
    InvalidReference,
    ManifestError,
    ObjectFrozen,
    StoreNotFound,
    TransferError,
)
from pipeline.oci import (
    DOCKER_CONFIG,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    Descriptor,
    ImageIndex,
    ImageManifest,
    Manifest,
    RawManifest,
    Schema1Manifest,
    sha256_digest,
    walk_manifests,
)
from pipeline.refs import Reference
from pipeline.store.base import ObjectStore, Readable
from pipeline.transfer.digest_stream import CHUNK, BackgroundHasher, sha256_stream
from pipeline.transfer.ratelimit import RateLimiter, limited

log = logging.getLogger(__name__)

_TAR_BLOB_RE = re.compile(r"^blobs/(sha256)/([a-f0-9]{64})$")
_IMAGE_CONFIG_TYPES = frozenset({DOCKER_CONFIG, OCI_CONFIG})


@dataclass(frozen=True)
class Fault:
    """One thing wrong with the store: what kind, at which key, and why in a few words."""

    kind: str
    key: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.key} {self.detail}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "key": self.key, "detail": self.detail}


@dataclass
class VerifyReport:
    """What verify found and how much it read; `ok` when there is no fault."""

    faults: list[Fault] = field(default_factory=list)
    records: int = 0
    links: int = 0
    manifests: int = 0
    blobs: int = 0
    """Blobs whose bytes were hashed (manifests and configs included)."""
    tars: int = 0
    tar_entries: int = 0
    bytes_hashed: int = 0
    """Bytes read from the store and hashed: blobs and tar entries."""
    bytes_decompressed: int = 0
    """Bytes of uncompressed layer data hashed for diff_ids (--deep)."""
    cold: list[str] = field(default_factory=list)
    """Keys in an archive class and not restored: not read, so not checked (no fault)."""
    thaw: str | None = None
    """The `bale thaw` command that makes `cold` readable (IMAGE... when no record keeps it)."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.faults

    def summary(self) -> str:
        from pipeline.units import format_size

        text = (
            f"verified {self.records} record(s), {self.links} link(s), {self.blobs} blob(s), "
            f"{self.tars} tar(s) ({self.tar_entries} entries), "
            f"{format_size(self.bytes_hashed)} hashed in {self.seconds:.1f}s: "
            + (f"{len(self.faults)} fault(s)" if self.faults else "no faults")
        )
        if self.cold:
            text += (
                f"; {len(self.cold)} object(s) in archive classes not checked: "
                f"run `{self.thaw}` to verify them"
            )
        return text

    def to_json(self) -> str:
        counts = {
            name: getattr(self, name)
            for name in (
                "records",
                "links",
                "manifests",
                "blobs",
                "tars",
                "tar_entries",
                "bytes_hashed",
                "bytes_decompressed",
            )
        }
        obj = {
            "ok": self.ok,
            "faults": [f.to_json() for f in self.faults],
            **counts,
            "cold": self.cold,
            "thaw": self.thaw,
            "seconds": round(self.seconds, 3),
        }
        return json.dumps(obj, indent=2) + "\n"


def verify_store(
    bucket: ArchiveBucket,
    images: Sequence[Reference] = (),
    *,
    jobs: int = 4,
    deep: bool = False,
    limiter: RateLimiter | None = None,
) -> VerifyReport:
    """Check the whole store, or only the images named (their records, links, blobs, tars).

    The whole store means every blob under `blobs/` (referenced or not: a later archive would
    reuse a corrupt one), every link under `repositories/` and every record with its tar.
    `deep` also decompresses each image layer and compares it with its config's diff_ids.
    Store errors other than a missing key (no network, no permission) are raised: they say
    nothing about the data.
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    verifier = _Verifier(bucket.store, jobs=jobs, deep=deep, limiter=limiter)
    report = verifier.run(list(images))
    if report.cold:
        report.thaw = _thaw_command(bucket, verifier.records, set(report.cold))
    return report


def _thaw_command(bucket: ArchiveBucket, records: list[ImageRecord], cold: set[str]) -> str:
    """`bale thaw` for the verified images that keep a cold key (IMAGE... for cold blobs no
    verified record lists: the whole-store check reads unreferenced blobs too)."""
    from pipeline.ops.thaw import thaw_command

    images: dict[str, None] = {}
    covered: set[str] = set()
    for record in records:
        keys = {record.tar_key} | {k for b in record.blobs if (k := _blob_key(b.digest))}
        if keys & cold:
            images[record.source] = None
            covered |= keys & cold
    more = [] if images and covered >= cold else ["IMAGE..."]
    return thaw_command([*images, *more], bucket)


def _blob_key(digest: str) -> str | None:
    try:
        return layout.blob_key(digest)
    except InvalidReference:
        return None


@dataclass(frozen=True)
class _Range:
    """A tar entry to hash: `size` bytes at `offset` of `key`, which must hash to `digest`."""

    key: str
    name: str
    offset: int
    size: int
    digest: str


class _Tee:
    """Passes `source` through while hashing (in the background) and counting what passed.

    `peek` reads ahead without consuming, so compression can be sniffed before a decompressor
    takes over the stream.
    """

    def __init__(self, source: Readable) -> None:
        self.source = source
        self.hasher = BackgroundHasher("sha256")
        self.count = 0
        self._ahead = b""

    def _pull(self, n: int) -> bytes:
        data = self.source.read(n)
        if data:
            self.hasher.update(data)
            self.count += len(data)
        return data

    def peek(self, n: int) -> bytes:
        while len(self._ahead) < n:
            data = self._pull(n - len(self._ahead))
            if not data:
                break
            self._ahead += data
        return self._ahead[:n]

    def read(self, n: int = -1, /) -> bytes:
        if self._ahead:
            if n is None or n < 0 or n >= len(self._ahead):
                data, self._ahead = self._ahead, b""
            else:
                data, self._ahead = self._ahead[:n], self._ahead[n:]
            return data
        return self._pull(CHUNK if n is None or n < 0 else n)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        self._ahead = b""
        while self._pull(CHUNK):
            pass

    def close(self) -> None:
        self.hasher.close()
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


class _Verifier:
    def __init__(
        self, store: ObjectStore, *, jobs: int, deep: bool, limiter: RateLimiter | None
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.deep = deep
        self.limiter = limiter
        self.report = VerifyReport()
        self._lock = threading.Lock()
        self._faults: dict[tuple[str, str, str], Fault] = {}
        self._listed: dict[str, int] | None = None
        """Whole-store mode: every stored blob's size by digest, from one listing."""
        self._sizes: dict[str, int | None] = {}
        """Named-image mode: stored sizes found by HEAD, None for absent."""
        self._needed: dict[str, list[str]] = {}
        self._claims: dict[str, list[tuple[int, str]]] = {}
        self._checked: set[str] = set()
        self._diff_ids: dict[str, dict[str, str]] = {}
        """(--deep) layer digest -> {diff_id: config digest that lists it}."""
        self._pending_configs: list[tuple[Descriptor, tuple[Descriptor, ...]]] = []
        self._cold: set[str] = set()
        self.records: list[ImageRecord] = []

    # -- bookkeeping -------------------------------------------------------------------------

    def fault(self, kind: str, key: str, detail: str) -> None:
        with self._lock:
            self._faults.setdefault((kind, key, detail), Fault(kind, key, detail))

    def cold(self, key: str) -> None:
        """`key` is in an archive class and not restored: not checked, and no fault."""
        with self._lock:
            self._cold.add(key)

    def _count(self, **amounts: int) -> None:
        with self._lock:
            for name, n in amounts.items():
                setattr(self.report, name, getattr(self.report, name) + n)

    def need(self, digest: str, who: str, size: int | None = None) -> None:
        """`who` cannot work without this blob (and says it is `size` bytes, when given)."""
        self._needed.setdefault(digest, []).append(who)
        if size is not None:
            self.claim(digest, size, who)

    def claim(self, digest: str, size: int, who: str) -> None:
        """`who` says the blob is `size` bytes, but does not need it to be stored."""
        self._claims.setdefault(digest, []).append((size, who))

    def stored_size(self, digest: str) -> int | None:
        if self._listed is not None:
            return self._listed.get(digest)
        with self._lock:
            if digest in self._sizes:
                return self._sizes[digest]
        key = _blob_key(digest)
        info = self.store.head(key) if key else None
        size = info.size if info is not None else None
        with self._lock:
            self._sizes[digest] = size
        return size

    def _map(
        self, pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any]
    ) -> list[Any]:
        return list(pool.map(fn, items))

    # -- the run -----------------------------------------------------------------------------

    def run(self, refs: list[Reference]) -> VerifyReport:
        started = time.monotonic()
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="bale-verify") as pool:
            if refs:
                records = self._named_records(pool, refs)
                links = self._expected_links(pool, records)
            else:
                self._list_blobs()
                records = self._all_records(pool)
                links = self._all_links(pool)
            roots = self._check_links(links)
            roots += self._check_records(records, links)
            self._walk_manifests(pool, roots)
            if self.deep:
                self._read_configs(pool)
            self._check_needed()
            self._hash(pool, records)
        self.records = records
        self.report.cold = sorted(self._cold)
        self.report.faults = sorted(self._faults.values(), key=lambda f: (f.key, f.kind, f.detail))
        self.report.seconds = time.monotonic() - started
        return self.report

    # -- what there is -----------------------------------------------------------------------

    def _list_blobs(self) -> None:
        self._listed = {}
        for info in self.store.list(layout.BLOBS_PREFIX):
            digest = layout.digest_from_blob_key(info.key)
            if digest is not None:
                self._listed[digest] = info.size

    def _read_record(self, key: str) -> tuple[bool, ImageRecord | None]:
        """(found, record): a record that is there but invalid is a fault, and None."""
        try:
            data = self.store.read(key)
        except StoreNotFound:
            return False, None
        try:
            return True, ImageRecord.from_json(data, key=key)
        except InvalidArchive as exc:
            self.fault("record-invalid", key, str(exc))
            return True, None

    def _all_records(self, pool: ThreadPoolExecutor) -> list[ImageRecord]:
        keys = []
        for info in self.store.list(layout.IMAGES_PREFIX):
            parsed = layout.parse_image_key(info.key)
            if parsed is not None and parsed.kind == "record":
                keys.append(info.key)
        return [r for _, r in self._map(pool, self._read_record, keys) if r is not None]

    def _record_key(self, ref: Reference) -> str:
        """Where `ref`'s record is: `REPO:TAG@DIGEST` is that digest archived by digest, else
        the tag's kept image of it (docs/layout.md), else the tag's current image."""
        key = layout.record_key_for(ref)
        if ref.tag is None or ref.digest is None:
            return key
        kept = layout.history_record_key(ref.store_repo, ref.tag, ref.digest)
        current = layout.record_key(ref.store_repo, ref.tag)
        return next((k for k in (key, kept, current) if self.store.head(k) is not None), key)

    def _named_records(self, pool: ThreadPoolExecutor, refs: list[Reference]) -> list[ImageRecord]:
        by_key = {self._record_key(ref): ref for ref in reversed(refs)}
        records = []
        for (key, ref), (found, record) in zip(
            by_key.items(), self._map(pool, self._read_record, by_key), strict=True
        ):
            if not found:
                self.fault("record-missing", key, f"{ref} is not archived here")
            elif record is not None:
                records.append(record)
        return records

    def _read_link(self, key: str) -> bytes | None:
        try:
            return self.store.read(key)
        except StoreNotFound:
            return None

    def _all_links(self, pool: ThreadPoolExecutor) -> dict[str, bytes | None]:
        keys = [
            info.key
            for info in self.store.list(layout.REPOSITORIES_PREFIX)
            if parse_link_key(info.key) is not None
        ]
        return dict(zip(keys, self._map(pool, self._read_link, keys), strict=True))

    def _expected_links(
        self, pool: ThreadPoolExecutor, records: list[ImageRecord]
    ) -> dict[str, bytes | None]:
        keys: list[str] = []
        for record in records:
            keys += [key for key, _ in self._links_of(record)]
        keys = list(dict.fromkeys(keys))
        return dict(zip(keys, self._map(pool, self._read_link, keys), strict=True))

    @staticmethod
    def _links_of(record: ImageRecord) -> list[tuple[str, str]]:
        """(link key, digest) of every link the record's image needs to be served."""
        out = []
        ref = record.reference
        if ref.tag and not ref.digest:  # a moved tag's kept image: its index link names it
            key = layout.tag_current_link_key(record.repo, ref.tag)
            if record.is_history:
                key = layout.tag_index_link_key(record.repo, ref.tag, record.digest)
            out.append((key, record.digest))
        for blob in record.blobs:
            if blob.media_type in MANIFEST_TYPES or blob.digest == record.digest:
                out.append((layout.revision_link_key(record.repo, blob.digest), blob.digest))
            else:
                out.append((layout.layer_link_key(record.repo, blob.digest), blob.digest))
        return out

    # -- links and records -------------------------------------------------------------------

    def _check_links(self, links: dict[str, bytes | None]) -> list[str]:
        """Bodies well formed and naming their path's digest; returns manifests to walk."""
        roots = []
        for key, body in links.items():
            link = parse_link_key(key)
            if body is None or link is None:
                continue
            self.report.links += 1
            digest = layout.parse_link_body(body)
            if digest is None:
                self.fault("link-invalid", key, "body is not a sha256 digest")
                continue
            if link.digest is not None and digest != link.digest:
                self.fault("link-invalid", key, f"holds {digest}, its path names {link.digest}")
                continue
            self.need(digest, link.describe)
            if link.kind != "layer":
                roots.append(digest)
        return roots

    def _check_records(
        self, records: list[ImageRecord], links: dict[str, bytes | None]
    ) -> list[str]:
        roots = []
        for record in records:
            self.report.records += 1
            who = f"record {record.record_key}"
            for blob in record.blobs:
                self.need(blob.digest, who, blob.size)
            self.need(record.digest, who)
            roots.append(record.digest)
            roots += [b.digest for b in record.blobs if b.media_type in MANIFEST_TYPES]
            for key, digest in self._links_of(record):
                body = links.get(key)
                if body is None:
                    self.fault("link-missing", key, f"{record.source} needs it for {digest}")
                    continue
                held = layout.parse_link_body(body)
                # A layer or revision link holding another digest is already link-invalid.
                if held is not None and held != digest and key.endswith("/current/link"):
                    self.fault("tag-mismatch", key, f"points at {held}, {who} says {digest}")
        return roots

    # -- manifests ---------------------------------------------------------------------------

    def _load_manifest(self, digest: str) -> tuple[str, bytes | None]:
        size = self.stored_size(digest)
        key = _blob_key(digest)
        if size is None or key is None:
            return digest, None
        if size > MAX_MANIFEST_BYTES:
            self.fault("manifest-invalid", key, f"is {size} bytes, over the manifest limit")
            return digest, None
        try:
            return digest, self.store.read(key)
        except StoreNotFound:
            return digest, None
        except ObjectFrozen:
            self.cold(key)
            return digest, None

    def _walk_manifests(self, pool: ThreadPoolExecutor, roots: list[str]) -> None:
        """Read every manifest the roots reach, once; an absent child is no fault by itself
        (see the module docstring), an unreadable one is a fault and is not walked further."""
        graph = walk_manifests(
            dict.fromkeys(roots),
            self._fetch_manifest,
            max_depth=None,
            missing="skip",
            fetch_map=lambda fn, items: self._map(pool, fn, items),
        )
        for node in graph.nodes:
            self._note_manifest(node.raw.digest, node.manifest)

    def _fetch_manifest(self, digest: str, _listed: Descriptor | None) -> RawManifest | None:
        """A stored manifest whose bytes hash to its digest and parse; None (with a fault when
        it is there but bad) otherwise."""
        key = _blob_key(digest)
        if key is None:
            return None
        digest, data = self._load_manifest(digest)
        if data is None:
            return None
        self._checked.add(digest)
        self._count(blobs=1, manifests=1, bytes_hashed=len(data))
        actual = sha256_digest(data)
        if actual != digest:
            self.fault("blob-corrupt", key, f"hashes to {actual}")
            return None
        try:
            raw = RawManifest.from_bytes(data)
            raw.parse()
        except ManifestError as exc:
            self.fault("manifest-invalid", key, str(exc))
            return None
        return raw

    def _note_manifest(self, digest: str, parsed: Manifest) -> None:
        """Note what one manifest needs (its blobs) and claims (its children's sizes)."""
        key = layout.blob_key(digest)
        who = f"manifest {digest}"
        if isinstance(parsed, ImageManifest):
            for desc in parsed.blobs:
                self._need_desc(desc, who, key)
            if self.deep and parsed.config.media_type in _IMAGE_CONFIG_TYPES:
                self._pending_configs.append((parsed.config, parsed.layers))
        elif isinstance(parsed, ImageIndex):
            for desc in parsed.manifests:
                if _blob_key(desc.digest) is None:
                    self.fault("manifest-invalid", key, f"names unsupported digest {desc.digest}")
                    continue
                self.claim(desc.digest, desc.size, who)
        elif isinstance(parsed, Schema1Manifest):
            for layer in parsed.layer_digests:
                if _blob_key(layer) is not None:
                    self.need(layer, who)
        if parsed.subject is not None and _blob_key(parsed.subject.digest):
            self.claim(parsed.subject.digest, parsed.subject.size, who)

    def _need_desc(self, desc: Descriptor, who: str, key: str) -> None:
        if _blob_key(desc.digest) is None:
            self.fault("manifest-invalid", key, f"names unsupported digest {desc.digest}")
            return
        if desc.urls:  # a foreign layer lives elsewhere; only its size can be claimed
            self.claim(desc.digest, desc.size, who)
            return
        self.need(desc.digest, who, desc.size)

    def _read_configs(self, pool: ThreadPoolExecutor) -> None:
        seen: set[str] = set()
        jobs = []
        for config, layers in self._pending_configs:
            if config.digest not in seen:
                seen.add(config.digest)
                jobs.append((config, layers))
        for config, layers, data in self._map(pool, self._load_config, jobs):
            if data is not None:
                self._note_diff_ids(config, layers, data)

    def _load_config(
        self, job: tuple[Descriptor, tuple[Descriptor, ...]]
    ) -> tuple[Descriptor, tuple[Descriptor, ...], bytes | None]:
        config, layers = job
        size = self.stored_size(config.digest)
        if size is None or size != config.size or size > MAX_MANIFEST_BYTES:
            return config, layers, None
        key = layout.blob_key(config.digest)
        try:
            return config, layers, self.store.read(key)
        except StoreNotFound:
            return config, layers, None
        except ObjectFrozen:
            self.cold(key)
            return config, layers, None

    def _note_diff_ids(
        self, config: Descriptor, layers: tuple[Descriptor, ...], data: bytes
    ) -> None:
        key = layout.blob_key(config.digest)
        if config.digest not in self._checked:
            self._checked.add(config.digest)
            self._count(blobs=1, bytes_hashed=len(data))
            actual = sha256_digest(data)
            if actual != config.digest:
                self.fault("blob-corrupt", key, f"hashes to {actual}")
                return
        try:
            obj = json.loads(data)
            diff_ids = obj["rootfs"]["diff_ids"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            self.fault("layer-diff-id", key, "config has no rootfs.diff_ids")
            return
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            self.fault(
                "layer-diff-id",
                key,
                f"config lists {len(diff_ids) if isinstance(diff_ids, list) else 0} "
                f"diff_ids for {len(layers)} layers",
            )
            return
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            if isinstance(diff_id, str) and not layer.urls:
                self._diff_ids.setdefault(layer.digest, {}).setdefault(diff_id, config.digest)

    # -- presence and sizes ------------------------------------------------------------------

    def _check_needed(self) -> None:
        for digest, whom in self._needed.items():
            key = _blob_key(digest)
            if key is None:
                continue
            if self.stored_size(digest) is None:
                more = f" and {len(whom) - 1} more" if len(whom) > 1 else ""
                self.fault("blob-missing", key, f"needed by {whom[0]}{more}")

    def _size_fault(self, digest: str, size: int) -> bool:
        for claimed, who in self._claims.get(digest, ()):
            if claimed != size:
                key = layout.blob_key(digest)
                self.fault("blob-size", key, f"is {size} bytes, {who} says {claimed}")
                return True
        return False

    # -- hashing -----------------------------------------------------------------------------

    def _hash(self, pool: ThreadPoolExecutor, records: list[ImageRecord]) -> None:
        if self._listed is not None:
            digests = list(self._listed)
        else:
            digests = list(dict.fromkeys([*self._needed, *self._claims]))
        futures: list[Future[None]] = []
        for digest in digests:
            if digest in self._checked or _blob_key(digest) is None:
                continue
            size = self.stored_size(digest)
            if size is None or self._size_fault(digest, size):
                continue
            futures.append(pool.submit(self._hash_blob, digest, size))
        for digest in self._checked:
            size = self.stored_size(digest)
            if size is not None:
                self._size_fault(digest, size)
        tar_futures = [pool.submit(self._tar_ranges, record) for record in records]
        for tar_fut in as_completed(tar_futures):
            for entry in tar_fut.result():
                futures.append(pool.submit(self._hash_range, entry))
        for fut in futures:
            fut.result()

    def _open(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        return limited(self.store.open(key, start, length), self.limiter)

    def _hash_blob(self, digest: str, size: int) -> None:
        key = layout.blob_key(digest)
        diff_ids = self._diff_ids.get(digest) if self.deep else None
        try:
            if diff_ids:
                self._hash_layer(digest, key, size, diff_ids)
                return
            stream = self._open(key)
            try:
                actual, read = sha256_stream(stream)
            finally:
                _close(stream)
        except StoreNotFound:
            if digest in self._needed:
                self.fault("blob-missing", key, "deleted while verify ran")
            return
        except ObjectFrozen:
            self.cold(key)
            return
        self._count(blobs=1, bytes_hashed=read)
        if read != size:
            self.fault("blob-size", key, f"listed as {size} bytes, {read} read")
        elif actual != digest:
            self.fault("blob-corrupt", key, f"hashes to {actual}")

    def _hash_layer(self, digest: str, key: str, size: int, diff_ids: dict[str, str]) -> None:
        """One pass: the stored bytes hash to the digest, and uncompressed to a diff_id."""
        tee = _Tee(self._open(key))
        error: str | None = None
        diff: str | None = None
        uncompressed = 0
        try:
            kind = detect_compression(tee.peek(MAGIC_LEN))
            reader = open_decompressed(kind, tee)
            try:
                diff, uncompressed = sha256_stream(reader)
            except DECOMPRESS_ERRORS as exc:
                error = f"does not decompress as {kind}: {exc}"
            tee.drain()
            actual = tee.hasher.digest()
        finally:
            tee.close()
        self._count(blobs=1, bytes_hashed=tee.count, bytes_decompressed=uncompressed)
        if tee.count != size:
            self.fault("blob-size", key, f"listed as {size} bytes, {tee.count} read")
        elif actual != digest:
            self.fault("blob-corrupt", key, f"hashes to {actual}")
        elif error is not None:
            self.fault("layer-invalid", key, error)
        elif diff not in diff_ids:
            wanted, config = next(iter(diff_ids.items()))
            self.fault(
                "layer-diff-id", key, f"decompresses to {diff}, config {config} says {wanted}"
            )

    # -- tars --------------------------------------------------------------------------------

    def _tar_ranges(self, record: ImageRecord) -> list[_Range]:
        """Check a record's tar by its headers and JSON; return its blob entries to hash."""
        key = record.tar_key
        info = self.store.head(key)
        if info is None:
            self.fault("tar-missing", key, f"record {record.record_key} names it")
            return []
        if info.frozen and info.size == record.tar_size:
            self.cold(key)
            return []
        self._count(tars=1)
        if info.size != record.tar_size:
            self.fault("tar-size", key, f"is {info.size} bytes, the record says {record.tar_size}")
            return []
        try:
            tar = TarIndex(StoreSource(self.store, key, info.size))
        except InvalidArchive as exc:
            self.fault("tar-invalid", key, str(exc))
            return []
        except ObjectFrozen:  # moved to an archive class since its HEAD
            self.cold(key)
            return []
        blobs: dict[str, TarMember] = {}
        for member in tar.members.values():
            m = _TAR_BLOB_RE.match(member.name)
            if m and member.kind == "file":
                blobs[f"{m.group(1)}:{m.group(2)}"] = member
        for name in ("oci-layout", "index.json", "manifest.json"):
            if name not in tar:
                self.fault("tar-entry-missing", key, name)
        verified: set[str] = set()
        try:
            archive = ImageArchive(tar.source, tar)
        except InvalidArchive as exc:
            self.fault("tar-invalid", key, str(exc))
        else:
            self._check_tar_index(record, archive, blobs, verified)
            self._check_tar_docker(key, archive)
        return [
            _Range(key, member.name, member.offset, member.size, digest)
            for digest, member in blobs.items()
            if digest not in verified
        ]

    def _check_tar_index(
        self,
        record: ImageRecord,
        archive: ImageArchive,
        blobs: dict[str, TarMember],
        verified: set[str],
    ) -> None:
        """index.json names the record's image, and everything it reaches is in the tar with
        the size its descriptor says; manifests are hashed here (`verified`)."""
        key = record.tar_key
        if not archive.is_oci:
            return
        descs = [e.descriptor for e in archive.entries if e.descriptor is not None]
        if [d.digest for d in descs] != [record.tar_digest]:
            shown = ", ".join(d.digest for d in descs) or "nothing"
            self.fault("tar-invalid", key, f"index.json points at {shown}, not {record.tar_digest}")
        wrong_size: dict[str, TarMember] = {}

        def fetch(digest: str, listed: Descriptor | None) -> RawManifest | None:
            member = blobs.get(digest)
            if member is None or listed is None:
                return None
            if member.size != listed.size:
                wrong_size[digest] = member
                return None
            if listed.media_type not in MANIFEST_TYPES or member.size > MAX_MANIFEST_BYTES:
                return None
            data = archive.source.read_at(member.offset, member.size)
            verified.add(digest)
            self._count(tar_entries=1, bytes_hashed=len(data))
            actual = sha256_digest(data)
            if actual != digest:
                self.fault("tar-entry-corrupt", key, f"{member.name} hashes to {actual}")
                return None
            try:
                raw = RawManifest.from_bytes(data, listed.media_type)
                raw.parse()
            except ManifestError as exc:
                self.fault("tar-invalid", key, f"{member.name}: {exc}")
                return None
            return raw

        graph = walk_manifests(descs, fetch, max_depth=None, missing="report")
        named = [
            (digest, f"manifest {parent}" if parent else "index.json", listed.size)
            for digest, listed, parent in graph.missing
            if listed is not None
        ]
        seen = {digest for digest, _, _ in named} | {n.raw.digest for n in graph.nodes}
        for node, image in graph.images():
            for desc in image.blobs:
                if not desc.urls and desc.digest not in seen:
                    seen.add(desc.digest)
                    named.append((desc.digest, f"manifest {node.raw.digest}", desc.size))
        for digest, who, size in named:
            member = wrong_size.get(digest) or blobs.get(digest)
            if member is None:
                self.fault(
                    "tar-entry-missing", key, f"blobs/{digest.replace(':', '/')} (named by {who})"
                )
            elif member.size != size:
                self.fault(
                    "tar-entry-size",
                    key,
                    f"{member.name} is {member.size} bytes, {who} says {size}",
                )

    def _check_tar_docker(self, key: str, archive: ImageArchive) -> None:
        for item in archive.docker_items:
            for path in (item.config, *item.layers):
                if path not in archive.tar:
                    self.fault("tar-entry-missing", key, f"{path} (named by manifest.json)")

    def _hash_range(self, entry: _Range) -> None:
        try:
            stream = self._open(entry.key, entry.offset, entry.size)
        except ObjectFrozen:
            self.cold(entry.key)
            return
        try:
            actual, read = sha256_stream(stream)
        except (StoreNotFound, TransferError) as exc:
            self.fault("tar-invalid", entry.key, f"{entry.name}: {exc}")
            return
        except ObjectFrozen:  # moved to an archive class since the tar's headers were read
            self.cold(entry.key)
            return
        finally:
            _close(stream)
        self._count(tar_entries=1, bytes_hashed=read)
        if read != entry.size:
            self.fault("tar-invalid", entry.key, f"{entry.name}: {read} of {entry.size} bytes read")
        elif actual != entry.digest:
            self.fault("tar-entry-corrupt", entry.key, f"{entry.name} hashes to {actual}")


def _close(stream: Readable) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()
