"""`bale thaw`: restore requests for the archived objects an image needs, and the check that
`restore`/`copy` make before their first byte (docs/lifecycle.md).

An image needs its record's blobs (manifests, configs, layers: what a restore pushes) and its
tar. Objects in an archive class (S3 GLACIER/DEEP_ARCHIVE, OSS Archive and colder) are read
only after a restore, which takes minutes to days: `thaw` asks for it (idempotently: a restore
already running or done is not asked again) and says where each image stands, so a rerun
after an interruption simply reports the restores already under way.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.record import ImageRecord
from pipeline.errors import BaleError, ObjectFrozen, StoreNotFound
from pipeline.refs import Reference
from pipeline.store.base import ObjectStore
from pipeline.store.classes import Thaw, restore_time
from pipeline.transfer import cancel

_WORKERS = 8


@dataclass(frozen=True)
class ObjectThaw:
    key: str
    storage_class: str | None
    state: Thaw


@dataclass(frozen=True)
class ImageThaw:
    """Where one image stands: `ready`, `in progress` or `not needed`."""

    image: str
    objects: tuple[ObjectThaw, ...] = field(default=())
    expected: str | None = None
    """The provider's estimate for the slowest restore still running."""

    @property
    def state(self) -> Thaw:
        states = {o.state for o in self.objects}
        if Thaw.IN_PROGRESS in states:
            return Thaw.IN_PROGRESS
        return Thaw.READY if Thaw.READY in states else Thaw.NOT_NEEDED

    def to_json(self) -> dict[str, Any]:
        counts = {s.value: sum(o.state == s for o in self.objects) for s in Thaw}
        return {
            "image": self.image,
            "state": self.state.value,
            "expected": self.expected,
            "objects": counts,
            "waiting": [o.key for o in self.objects if o.state == Thaw.IN_PROGRESS],
        }


def needed_keys(record: ImageRecord, *, tar: bool = True) -> list[str]:
    """The keys a restore of `record`'s image reads (every blob it keeps), and its tar."""
    found = [layout.blob_key(b.digest) for b in record.blobs]
    return [*found, record.tar_key] if tar else found


def _record(bucket: ArchiveBucket, ref: Reference) -> ImageRecord:
    record = bucket.read_record(ref)
    if record is None:
        raise StoreNotFound(f"{ref} is not archived in {bucket.url}")
    return record


def thaw_image(
    bucket: ArchiveBucket, ref: Reference, *, days: int = 1, tier: str = "Standard"
) -> ImageThaw:
    """Ask for a restore of every archived object `ref` needs that is not readable yet."""
    store = bucket.store
    keys = needed_keys(_record(bucket, ref))

    def one(key: str) -> ObjectThaw:
        info = store.head(key)
        if info is None:
            raise StoreNotFound(f"{store.describe(key)}: not found")
        if not info.archived:
            return ObjectThaw(key, info.storage_class, Thaw.NOT_NEEDED)
        return ObjectThaw(key, info.storage_class, store.restore(key, days=days, tier=tier))

    objects = _each(one, keys)
    running = sorted({o.storage_class or "" for o in objects if o.state == Thaw.IN_PROGRESS})
    expected = "; ".join(f"{c}: {restore_time(c, tier)}" for c in running) or None
    return ImageThaw(str(ref), tuple(objects), expected)


def frozen_keys(bucket: ArchiveBucket, ref: Reference) -> list[str]:
    """The objects a restore of `ref` reads that cannot be read now (none on a local store)."""
    if bucket.store.url.startswith("file:"):
        return []
    record = bucket.read_record(ref)
    if record is None:
        return []  # by a digest with no record of its own: the reads will say, key by key
    keys = needed_keys(record, tar=False)
    infos = _each(bucket.store.head, keys)
    return [k for k, info in zip(keys, infos, strict=True) if info is not None and info.frozen]


def thaw_command(refs: Iterable[Reference | str], bucket: ArchiveBucket) -> str:
    return shlex.join(["bale", "thaw", *(str(r) for r in refs), "--from", bucket.url])


def check_thawed(bucket: ArchiveBucket, refs: list[Reference]) -> None:
    """ObjectFrozen (exit 2) naming the `bale thaw` command when any of `refs` has objects in an
    archive class not restored: before the first byte, never a half-pushed image."""
    frozen = {ref: frozen_keys(bucket, ref) for ref in refs}
    cold = [ref for ref, keys in frozen.items() if keys]
    if cold:
        count = sum(len(frozen[r]) for r in cold)
        raise ObjectFrozen(
            f"{count} object(s) of {', '.join(map(str, cold))} are in an archive storage class "
            f"and not restored: run `{thaw_command(cold, bucket)}` first (or restore with "
            "--thaw --wait)",
            key=frozen[cold[0]][0],
        )


def check_object_thawed(store: ObjectStore, key: str) -> None:
    """ObjectFrozen (exit 2) before the first byte of a single object (a tar `copy` reads)
    that cannot be read now; for a tar bale archived, naming the `bale thaw` that unblocks it."""
    info = store.head(key)
    if info is None or not info.frozen:
        return
    thaw = "a restore (RestoreObject) of it"
    at = key.rfind(layout.IMAGES_PREFIX)
    found = layout.parse_image_key(key[at:]) if at >= 0 else None
    if found is not None and found.kind == "tar":
        try:
            record_key = key[:at] + layout.record_key_of_tar(key[at:])
            record = ImageRecord.from_json(store.read(record_key))
            where = store.describe(key[:at]).rstrip("/")
            thaw = f"`{shlex.join(['bale', 'thaw', record.source, '--from', where])}`"
        except BaleError:
            pass
    state = "is being restored" if info.restore is not None else "is not restored"
    raise ObjectFrozen(
        f"{store.describe(key)} is in {info.storage_class} and {state}: run {thaw} first",
        key=key,
    )


def thaw_and_wait(
    bucket: ArchiveBucket,
    refs: list[Reference],
    *,
    days: int = 1,
    tier: str = "Standard",
    progress: Callable[[list[ImageThaw]], None] = lambda _: None,
    first_wait: float = 2.0,
    longest_wait: float = 300.0,
) -> list[ImageThaw]:
    """Thaw `refs` and poll (doubling waits, up to `longest_wait`) until all are readable.
    Interrupted, a rerun finds the restores already running and waits for them."""
    wait = first_wait
    while True:
        states = [thaw_image(bucket, ref, days=days, tier=tier) for ref in refs]
        progress(states)
        if all(s.state != Thaw.IN_PROGRESS for s in states):
            return states
        cancel.sleep(wait)  # Ctrl-C: Interrupted; the provider's restores go on
        wait = min(wait * 2, longest_wait)


def _each(fn: Callable[[str], Any], keys: list[str]) -> list[Any]:
    if not keys:
        return []
    with ThreadPoolExecutor(min(_WORKERS, len(keys)), "bale-thaw") as pool:
        return list(pool.map(fn, keys))
