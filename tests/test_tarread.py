"""Reading image tars: bale's own, skopeo's two writers, docker save's old and new layouts,
and tars built to be hostile.

docker itself is not installed here, so the docker save layouts are built in-test from the
same images, following what docker writes (old: `<id>/layer.tar` uncompressed with symlinked
duplicates, `<config hex>.json`, `repositories`; 25+: an OCI layout plus manifest.json).
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from pipeline.archive.tarplan import blob_path
from pipeline.archive.tarread import (
    DOCKER_LAYER,
    BytesSource,
    FileSource,
    ImageArchive,
    StoreSource,
    index_tar,
    parse_number,
)
from pipeline.errors import DigestMismatch, InvalidArchive
from pipeline.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    RawManifest,
    sha256_digest,
)
from pipeline.refs import Reference
from pipeline.store.base import ObjectInfo
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec, Skopeo
from tests.bed.tars import (
    file_entry,
    link_entry,
    make_tar,
    members_of,
    old_docker_save,
    plan_for,
    raw_of,
    write_plan,
)


def read_all(reader: object) -> bytes:
    out = b""
    while chunk := reader.read(1000):  # type: ignore[attr-defined]
        out += chunk
    return out


@pytest.fixture(scope="module")
def docker_image(image_factory: ImageFactory) -> BuiltImage:
    return image_factory.image(
        [
            LayerSpec(4000, "gzip", seed=301),
            LayerSpec(1500, "none", seed=302),
            LayerSpec(4000, "gzip", seed=301),
        ],
        format="docker",
    )


@pytest.fixture(scope="module")
def oci_index(image_factory: ImageFactory) -> BuiltImage:
    return image_factory.index(
        ["linux/amd64", "linux/arm64"],
        [LayerSpec(1000, "zstd", seed=303), LayerSpec(800, seed=304)],
    )


def check_image_matches(archive_image: object, image: BuiltImage) -> None:
    """Every manifest byte-identical; every blob readable, verified, identical."""
    from pipeline.archive.tarread import ArchiveImage

    assert isinstance(archive_image, ArchiveImage)
    top = archive_image.manifest()
    assert top.data == image.manifest and top.digest == image.digest
    for child in image.children:
        assert archive_image.manifest(child.digest).data == child.manifest
    for desc in image.blobs:
        assert read_all(archive_image.open_blob(desc)) == image.read_blob(desc.digest)
    assert archive_image.missing_blobs() == []


# --- our own tars --------------------------------------------------------------------------


def test_reads_our_single_image_tar(docker_image: BuiltImage, tmp_path: Path) -> None:
    tar = tmp_path / "a.tar"
    write_plan(plan_for(docker_image), docker_image, tar)
    with FileSource(tar) as source:
        archive = ImageArchive(source)
        assert archive.format == "oci"
        (entry,) = archive.entries
        assert entry.names == ("127.0.0.1:5000/team/app:1.0", "1.0")
        image = archive.image()
        assert image.reference == Reference.parse("127.0.0.1:5000/team/app:1.0")
        check_image_matches(image, docker_image)
        config = docker_image.config_descriptor
        assert config is not None and image.blob(config) == docker_image.config
        offset, size = image.blob_range(config)
        assert tar.read_bytes()[offset : offset + size] == docker_image.config


def test_reads_our_all_platforms_tar_from_every_source(
    oci_index: BuiltImage, tmp_path: Path
) -> None:
    tar = tmp_path / "all.tar"
    data = write_plan(plan_for(oci_index, all_platforms=True), oci_index, tar)
    sources = [FileSource(tar), BytesSource(data)]
    for source in sources:
        archive = ImageArchive(source)
        image = archive.image("127.0.0.1:5000/team/app:1.0")
        check_image_matches(image, oci_index)
        top = image.manifest().parse()
        assert not isinstance(top, ImageManifest)


class DictStore:
    """Just enough of an ObjectStore for StoreSource: head and ranged read, counted."""

    url = "memory://test"

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.bytes_read = 0
        self.reads = 0

    def head(self, key: str) -> ObjectInfo | None:
        return ObjectInfo(key, len(self.objects[key])) if key in self.objects else None

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        data = self.objects[key][start : None if length is None else start + length]
        self.bytes_read += len(data)
        self.reads += 1
        return data


def test_store_source_reads_headers_not_layers(image_factory: ImageFactory, tmp_path: Path) -> None:
    big = image_factory.image(
        [LayerSpec(3 << 20, "gzip", seed=305), LayerSpec(2 << 20, "none", seed=306)]
    )
    data = write_plan(plan_for(big), big, tmp_path / "big.tar")
    store = DictStore({"images/x/1.tar": data})
    with pytest.raises(InvalidArchive):
        StoreSource(store, "images/missing.tar")  # type: ignore[arg-type]
    archive = ImageArchive(StoreSource(store, "images/x/1.tar"))  # type: ignore[arg-type]
    image = archive.image()
    assert image.manifest().data == big.manifest
    assert image.missing_blobs() == []
    assert store.bytes_read < 256 * 1024 < len(data) // 10
    before = store.bytes_read
    layer = big.layers[1]
    assert read_all(image.open_blob(layer)) == big.read_blob(layer.digest)
    assert store.bytes_read - before == layer.size


# --- skopeo's writers -----------------------------------------------------------------------


@pytest.mark.integration
def test_reads_skopeo_docker_archive(
    docker_image: BuiltImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    tar = tmp_path / "sk.tar"
    skopeo.copy(docker_image.oci_ref, f"docker-archive:{tar}:example.com/x/y:2")
    with tarfile.open(tar) as tf:
        assert any(m.issym() for m in tf.getmembers())  # legacy <id>/layer.tar symlinks
    seen = skopeo.inspect(f"docker-archive:{tar}")
    archive = ImageArchive(FileSource(tar))
    assert archive.format == "docker"
    image = archive.image("example.com/x/y:2")
    raw = image.manifest()
    manifest = raw.parse()
    assert isinstance(manifest, ImageManifest) and raw.media_type == DOCKER_MANIFEST
    # skopeo's writer stores layers uncompressed: digests are the diff_ids, as skopeo reports.
    assert [d.digest for d in manifest.layers] == seen["Layers"] == list(docker_image.diff_ids)
    assert {d.media_type for d in manifest.layers} == {DOCKER_LAYER}
    assert manifest.config.digest == docker_image.config_descriptor.digest  # type: ignore[union-attr]
    assert manifest.config.media_type == DOCKER_CONFIG
    for desc in manifest.blobs:
        blob = read_all(image.open_blob(desc))
        assert sha256_digest(blob) == desc.digest and len(blob) == desc.size
    assert image.missing_blobs() == []


@pytest.mark.integration
def test_reads_skopeo_oci_archive(oci_index: BuiltImage, skopeo: Skopeo, tmp_path: Path) -> None:
    tar = tmp_path / "sko.tar"
    skopeo.copy(oci_index.oci_ref, f"oci-archive:{tar}:v1", "--all", "--preserve-digests")
    archive = ImageArchive(FileSource(tar))
    assert archive.entries[0].names == ("v1",)
    image = archive.image("v1")
    assert image.reference is None  # a bare tag is not a reference
    check_image_matches(image, oci_index)


@pytest.mark.integration
def test_reads_a_layout_tarred_with_dot_prefixes(
    docker_image: BuiltImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    skopeo.copy(docker_image.oci_ref, f"oci:{layout}:t", "--preserve-digests")
    tar = tmp_path / "dot.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(tar), "."], check=True)
    with tarfile.open(tar) as tf:
        assert "./index.json" in tf.getnames()
    check_image_matches(ImageArchive(FileSource(tar)).image("t"), docker_image)


# --- docker save, old and new ----------------------------------------------------------------


def test_reads_old_docker_save(docker_image: BuiltImage) -> None:
    data = old_docker_save(docker_image, ["nginx:1.17.6"])
    archive = ImageArchive(BytesSource(data))
    assert archive.format == "docker"
    image = archive.image("docker.io/library/nginx:1.17.6")  # RepoTags normalise
    assert image.reference == Reference.parse("nginx:1.17.6")
    raw = image.manifest()
    manifest = raw.parse()
    assert isinstance(manifest, ImageManifest)
    assert [d.digest for d in manifest.layers] == list(docker_image.diff_ids)
    assert [d.media_type for d in manifest.layers] == [DOCKER_LAYER] * 3
    assert manifest.config == docker_image.config_descriptor
    assert raw.digest == sha256_digest(raw.data)
    for desc in manifest.blobs:
        assert sha256_digest(read_all(image.open_blob(desc))) == desc.digest
    assert image.blob(manifest.config) == docker_image.config


def test_compressed_layers_are_hashed_and_typed(docker_image: BuiltImage) -> None:
    gz = ImageArchive(BytesSource(old_docker_save(docker_image, ["a/b:1"], "gzip"))).image()
    manifest = gz.manifest().parse()
    assert isinstance(manifest, ImageManifest)
    assert gz.manifest().media_type == DOCKER_MANIFEST
    assert [d.media_type for d in manifest.layers] == [DOCKER_LAYER_GZIP] * 3
    assert manifest.layers[0] == manifest.layers[2]  # one file behind the symlink
    for desc in manifest.blobs:
        assert sha256_digest(read_all(gz.open_blob(desc))) == desc.digest

    zs = ImageArchive(BytesSource(old_docker_save(docker_image, ["a/b:1"], "zstd"))).image()
    raw = zs.manifest()
    manifest = raw.parse()
    assert isinstance(manifest, ImageManifest) and raw.media_type == OCI_MANIFEST
    assert [d.media_type for d in manifest.layers] == [OCI_LAYER_ZSTD] * 3

    xz = ImageArchive(BytesSource(old_docker_save(docker_image, ["a/b:1"], "xz"))).image()
    with pytest.raises(InvalidArchive, match="xz"):
        xz.manifest()


def test_docker_archive_of_registry_blobs_gets_the_registry_manifest(
    docker_image: BuiltImage,
) -> None:
    """manifest.json over the registry's own blobs (no OCI layout): the synthesised manifest
    describes exactly the source manifest's config and layers."""
    members = [
        file_entry(blob_path(d.digest), docker_image.read_blob(d.digest))
        for d in docker_image.blobs
    ]
    config = docker_image.config_descriptor
    assert config is not None
    item = {
        "Config": blob_path(config.digest),
        "RepoTags": [],
        "Layers": [blob_path(d.digest) for d in docker_image.layers],
    }
    members.append(file_entry("manifest.json", json.dumps([item]).encode()))
    image = ImageArchive(BytesSource(make_tar(members))).image()
    synthesised = image.manifest().parse()
    original = raw_of(docker_image).parse()
    assert synthesised == original
    assert image.names == () and image.reference is None


def test_reads_docker_25_layout(oci_index: BuiltImage) -> None:
    """Docker 25+: OCI layout with containerd annotations plus manifest.json RepoTags."""
    child = oci_index.child("linux/arm64")
    desc = Descriptor(child.media_type, child.digest, len(child.manifest)).to_json()
    desc["annotations"] = {
        "io.containerd.image.name": "docker.io/library/alpine:3.19",
        "org.opencontainers.image.ref.name": "3.19",
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [desc],
    }
    assert child.config_descriptor is not None
    docker = [
        {
            "Config": blob_path(child.config_descriptor.digest),
            "RepoTags": ["alpine:3.19", "mirror.example.com/alpine:latest"],
            "Layers": [blob_path(d.digest) for d in child.layers],
        }
    ]
    members = [
        file_entry("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        file_entry("index.json", json.dumps(index).encode()),
        file_entry("manifest.json", json.dumps(docker).encode()),
        file_entry(blob_path(child.digest), child.manifest),
        *(
            file_entry(blob_path(d.digest), oci_index.read_blob(d.digest))
            for d in (child.config_descriptor, *child.layers)
        ),
    ]
    archive = ImageArchive(BytesSource(make_tar(members)))
    assert archive.format == "oci"
    (entry,) = archive.entries
    assert entry.names == (
        "docker.io/library/alpine:3.19",
        "3.19",
        "alpine:3.19",
        "mirror.example.com/alpine:latest",
    )
    for name in (
        "alpine:3.19",
        "3.19",
        "mirror.example.com/alpine",
        "docker.io/library/alpine:3.19",
    ):
        assert archive.image(name).manifest().data == child.manifest
    with pytest.raises(InvalidArchive, match="no image named"):
        archive.image("alpine:3.20")


def test_choosing_among_several_images(docker_image: BuiltImage) -> None:
    one = json.loads(
        ImageArchive(BytesSource(old_docker_save(docker_image, ["a/b:1"]))).tar.read(
            "manifest.json"
        )
    )
    items = [dict(one[0], RepoTags=["a/b:1"]), dict(one[0], RepoTags=["a/b:2"])]
    members = members_of(old_docker_save(docker_image, []), drop="manifest.json")
    members.append(file_entry("manifest.json", json.dumps(items).encode()))
    archive = ImageArchive(BytesSource(make_tar(members, tarfile.USTAR_FORMAT)))
    assert [e.names for e in archive.entries] == [("a/b:1",), ("a/b:2",)]
    with pytest.raises(InvalidArchive, match="holds 2 images"):
        archive.image()
    assert archive.image("docker.io/a/b:2").entry.position == 1
    assert archive.image(position=0).names == ("a/b:1",)
    with pytest.raises(InvalidArchive, match="position 2"):
        archive.image(position=2)


# --- hostile and broken tars -------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([file_entry("/etc/passwd", b"x")], "absolute"),
        ([file_entry("../escape", b"x")], r"\.\."),
        ([file_entry("blobs/../../escape", b"x")], r"\.\."),
        ([link_entry("manifest.json", "../../etc/passwd")], "outside"),
        ([link_entry("a/b/layer.tar", "../../../x")], "outside"),
        ([link_entry("manifest.json", "/etc/passwd")], "absolute"),
        ([link_entry("manifest.json", "../x", tarfile.LNKTYPE)], r"\.\."),
    ],
)
def test_unsafe_names_are_refused(
    entries: list[tuple[tarfile.TarInfo, bytes | None]], message: str
) -> None:
    data = make_tar([file_entry("oci-layout", b"{}"), *entries])
    with pytest.raises(InvalidArchive, match=message):
        ImageArchive(BytesSource(data))


def test_links_inside_the_archive_are_followed_and_loops_refused() -> None:
    data = make_tar(
        [
            file_entry("real/file", b"hello"),
            link_entry("a/sym", "../real/file"),
            link_entry("hard", "real/file", tarfile.LNKTYPE),
            link_entry("loop1", "loop2"),
            link_entry("loop2", "loop1"),
            link_entry("dangling", "nowhere"),
        ]
    )
    members = index_tar(BytesSource(data))
    assert members["a/sym"].linkname == "real/file"
    from pipeline.archive.tarread import TarIndex

    tar = TarIndex(BytesSource(data))
    assert tar.read("a/sym") == tar.read("hard") == b"hello"
    with pytest.raises(InvalidArchive, match="too many levels"):
        tar.resolve("loop1")
    with pytest.raises(InvalidArchive, match="no member"):
        tar.resolve("dangling")


def test_gnu_long_names_and_base256_sizes() -> None:
    long_name = "d" * 150 + "/" + "f" * 120
    data = make_tar(
        [file_entry(long_name, b"gnu"), link_entry("l" * 200, "x" * 150)], tarfile.GNU_FORMAT
    )
    members = index_tar(BytesSource(data))
    assert members[long_name].size == 3
    assert members["l" * 200].linkname == "x" * 150

    # A ustar header whose size field is GNU base-256 (what writers use past 8 GiB).
    plain = make_tar([file_entry("b256", b"12345")], tarfile.USTAR_FORMAT)
    block = bytearray(plain[:512])
    block[124:136] = bytes([0x80]) + (5).to_bytes(11, "big")
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    patched = bytes(block) + plain[512:]
    assert index_tar(BytesSource(patched))["b256"].size == 5
    assert parse_number(bytes([0x80]) + (8 << 30).to_bytes(11, "big")) == 8 << 30
    with pytest.raises(InvalidArchive):
        parse_number(b"\xff" * 12)


def test_broken_tars(docker_image: BuiltImage, tmp_path: Path) -> None:
    with pytest.raises(InvalidArchive, match="checksum"):
        ImageArchive(BytesSource(b"not a tar at all" * 64))
    data = write_plan(plan_for(docker_image), docker_image, tmp_path / "t.tar")
    with pytest.raises(InvalidArchive, match="truncated"):
        ImageArchive(BytesSource(data[: len(data) - 3000]))
    with pytest.raises(InvalidArchive, match="neither"):
        ImageArchive(BytesSource(make_tar([file_entry("hello.txt", b"hi")])))
    with pytest.raises(InvalidArchive, match="not valid JSON"):
        ImageArchive(BytesSource(make_tar([file_entry("manifest.json", b"[")])))
    with pytest.raises(InvalidArchive, match="lacks Config"):
        ImageArchive(BytesSource(make_tar([file_entry("manifest.json", b"[{}]")])))


def test_missing_and_corrupt_blobs(docker_image: BuiltImage, tmp_path: Path) -> None:
    data = write_plan(plan_for(docker_image), docker_image, tmp_path / "t.tar")
    gone = docker_image.layers[1]
    kept = members_of(data, drop=blob_path(gone.digest))
    image = ImageArchive(BytesSource(make_tar(kept))).image()
    assert image.missing_blobs() == [gone.digest]
    with pytest.raises(InvalidArchive, match=gone.digest):
        image.check()
    with pytest.raises(InvalidArchive, match=f"missing blob {gone.digest}"):
        image.open_blob(gone)

    # Flip one byte inside a layer: the stream fails on its last read.
    layer = docker_image.layers[0]
    offset, size = ImageArchive(BytesSource(data)).image().blob_range(layer)
    corrupt = bytearray(data)
    corrupt[offset + size // 2] ^= 0xFF
    image = ImageArchive(BytesSource(bytes(corrupt))).image()
    with pytest.raises(DigestMismatch):
        read_all(image.open_blob(layer))
    # A descriptor whose size disagrees with the tar is refused before reading.
    with pytest.raises(InvalidArchive, match="expected"):
        image.open_blob(Descriptor(layer.media_type, layer.digest, layer.size + 1))
    # A corrupt manifest blob is refused by digest.
    m_offset, _ = image.blob_range(raw_of(docker_image).descriptor())
    corrupt[m_offset + 10] ^= 0x01
    with pytest.raises(InvalidArchive, match="got sha256:"):
        ImageArchive(BytesSource(bytes(corrupt))).image().manifest()


def test_index_tar_reads_gzip_media_types_from_descriptors(
    oci_index: BuiltImage, tmp_path: Path
) -> None:
    data = write_plan(plan_for(oci_index, all_platforms=True), oci_index, tmp_path / "i.tar")
    image = ImageArchive(BytesSource(data)).image()
    child = oci_index.children[0]
    manifest = image.manifest(child.digest).parse()
    assert isinstance(manifest, ImageManifest)
    assert {d.media_type for d in manifest.layers} == {OCI_LAYER_GZIP, OCI_LAYER_ZSTD}
    with pytest.raises(InvalidArchive, match="no manifest"):
        image.manifest("sha256:" + "0" * 64)
    assert isinstance(RawManifest.from_bytes(child.manifest), RawManifest)


def test_signed_checksums_are_accepted() -> None:
    """Some old writers summed header bytes as signed chars; readers accept both sums."""
    plain = make_tar([file_entry("ünï", b"x")], tarfile.USTAR_FORMAT)
    block = bytearray(plain[:512])
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in block)
    assert signed != sum(block)
    block[148:156] = f"{signed:06o}\0 ".encode()
    assert index_tar(BytesSource(bytes(block) + plain[512:]))["ünï"].size == 1
    block[148:156] = f"{signed + 1:06o}\0 ".encode()
    with pytest.raises(InvalidArchive, match="checksum"):
        index_tar(BytesSource(bytes(block) + plain[512:]))
