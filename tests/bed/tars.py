"""Image tars for the tar reader and writer tests, built two ways.

By hand with `tarfile` (`make_tar`, `members_of` to rebuild one changed, `old_docker_save` for
the layout `docker save` wrote before 25), and by bale's own writer from a test image
(`plan_for`, `write_plan`), so the reader is tested on tars it did not write and on ours.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import zstandard

from pipeline.archive.tarplan import TarPlan, plan_image_tar, write_tar
from pipeline.oci import Descriptor, RawManifest
from pipeline.refs import Reference
from pipeline.store.base import Readable
from tests.bed.images import BuiltImage

REF = Reference.parse("127.0.0.1:5000/team/app:1.0")
"""The reference the writer's plans are made for unless a test gives another."""


# ---- written by hand ---------------------------------------------------------------------------


def make_tar(
    members: Iterable[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def members_of(data: bytes, drop: str = "") -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The members of a tar with their data, less `drop`: to rebuild it changed."""
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for member in tf.getmembers():
            if member.name == drop:
                continue
            f = tf.extractfile(member) if member.isfile() else None
            out.append((member, f.read() if f is not None else None))
    return out


def file_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link_entry(
    name: str, target: str, kind: bytes = tarfile.SYMTYPE
) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def old_docker_save(image: BuiltImage, repo_tags: list[str], compress: str = "none") -> bytes:
    """What `docker save` wrote before 25: uncompressed `<id>/layer.tar`, duplicates symlinked.

    `compress` re-packs every layer file (gzip/zstd/xz) to exercise the other readers' paths.
    """
    config = image.config
    assert config is not None
    cfg_hex = hashlib.sha256(config).hexdigest()
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    paths: list[str] = []
    first: dict[str, str] = {}
    for i, (layer, diff_id) in enumerate(zip(image.layers, image.diff_ids, strict=True)):
        layer_id = hashlib.sha256(f"{i}{diff_id}".encode()).hexdigest()
        path = f"{layer_id}/layer.tar"
        paths.append(path)
        members.append(file_entry(f"{layer_id}/VERSION", b"1.0"))
        members.append(file_entry(f"{layer_id}/json", json.dumps({"id": layer_id}).encode()))
        if diff_id in first:
            members.append(link_entry(path, f"../{first[diff_id]}"))
            continue
        first[diff_id] = path
        blob = image.read_blob(layer.digest)
        tar_bytes = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
        if compress == "gzip":
            tar_bytes = gzip.compress(tar_bytes, mtime=0)
        elif compress == "zstd":
            tar_bytes = zstandard.ZstdCompressor().compress(tar_bytes)
        elif compress == "xz":
            tar_bytes = lzma.compress(tar_bytes)
        members.append(file_entry(path, tar_bytes))
    members.append(file_entry(f"{cfg_hex}.json", config))
    manifest = [{"Config": f"{cfg_hex}.json", "RepoTags": repo_tags, "Layers": paths}]
    members.append(file_entry("manifest.json", json.dumps(manifest).encode()))
    members.append(file_entry("repositories", b"{}"))
    return make_tar(members, tarfile.USTAR_FORMAT)


# ---- written by bale's tar writer --------------------------------------------------------------


def raw_of(image: BuiltImage) -> RawManifest:
    return RawManifest.from_bytes(image.manifest)


def opener(image: BuiltImage) -> Callable[[Descriptor], Readable]:
    return lambda desc: image.blob_path(desc.digest).open("rb")


def plan_for(
    image: BuiltImage,
    ref: Reference = REF,
    *,
    all_platforms: bool = False,
    platform: str | None = None,
    **kwargs: object,
) -> TarPlan:
    images: list[RawManifest] = []
    if image.is_index:
        if all_platforms:
            images = [raw_of(c) for c in image.children]
        else:
            images = [raw_of(image.child(platform or "linux/amd64"))]
    return plan_image_tar(
        ref,
        raw_of(image),
        images,
        all_platforms=all_platforms,
        **kwargs,  # type: ignore[arg-type]
    )


def write_plan(plan: TarPlan, image: BuiltImage, path: Path) -> bytes:
    with path.open("wb") as out:
        written = write_tar(plan, out, opener(image))
    data = path.read_bytes()
    assert written == len(data) == plan.total_size
    return data
