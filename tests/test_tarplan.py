"""The per-image tar: header bytes, plans, determinism, and the three readers that must accept it.

Images come from the test bed's factory (tests/bed/images.py: real gzip/zstd/uncompressed
layers in OCI layouts). Tars are written to real files and read back by Python's tarfile,
skopeo (`docker-archive:` and `oci-archive:`) and podman.
"""

from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.archive import layout
from pipeline.archive.tarplan import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    BLOCK,
    END_OF_ARCHIVE,
    OCI_LAYOUT,
    USTAR_MAX_SIZE,
    BlobSource,
    blob_path,
    padding,
    plan_image_tar,
    tar_header,
    to_compose_pieces,
    write_tar,
)
from pipeline.archive.tarread import parse_number
from pipeline.errors import DigestMismatch, ManifestError, TransferError
from pipeline.oci import OCI_INDEX, OCI_MANIFEST, Descriptor, Platform, RawManifest, sha256_digest
from pipeline.refs import Reference
from pipeline.store.base import CopyRange, Inline, Readable
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec, Skopeo
from tests.bed.tars import REF, plan_for, raw_of, write_plan


@pytest.fixture(scope="module")
def docker_image(image_factory: ImageFactory) -> BuiltImage:
    """Docker schema2, gzip and uncompressed layers, one layer used twice."""
    return image_factory.image(
        [
            LayerSpec(3000, "gzip", seed=101),
            LayerSpec(2000, "none", seed=102),
            LayerSpec(3000, "gzip", seed=101),
        ],
        format="docker",
    )


@pytest.fixture(scope="module")
def oci_index(image_factory: ImageFactory) -> BuiltImage:
    """A two-platform OCI index whose platforms share a zstd layer and differ in another."""
    return image_factory.index(
        ["linux/amd64", "linux/arm64/v8"],
        {
            "linux/amd64": [LayerSpec(1200, "zstd", seed=201), LayerSpec(900, seed=202)],
            "linux/arm64/v8": [LayerSpec(1200, "zstd", seed=201), LayerSpec(950, seed=203)],
        },
    )


# --- headers ---------------------------------------------------------------------------------


def test_ustar_header_reads_back_in_tarfile() -> None:
    header = tar_header("blobs/sha256/" + "a" * 64, 5, mtime=1234)
    assert len(header) == BLOCK
    info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
    assert (info.name, info.size, info.mtime, info.mode) == (
        "blobs/sha256/" + "a" * 64,
        5,
        1234,
        0o644,
    )
    assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")


def test_size_switches_to_pax_past_the_octal_limit() -> None:
    assert USTAR_MAX_SIZE == 8 * 1024**3 - 1
    at_limit = tar_header("big", USTAR_MAX_SIZE)
    assert len(at_limit) == BLOCK
    assert tarfile.TarInfo.frombuf(at_limit, "utf-8", "strict").size == USTAR_MAX_SIZE

    over = 8 * 1024**3
    header = tar_header("big", over)
    assert len(header) == 3 * BLOCK  # PAX header, its records, then the ustar block
    assert header[156:157] == b"x"
    assert b" size=8589934592\n" in header[BLOCK : 2 * BLOCK]
    ustar = header[-BLOCK:]
    assert parse_number(ustar[124:136]) == over  # base-256 for readers that skip PAX
    with tarfile.open(fileobj=io.BytesIO(header), mode="r:") as tf:
        member = tf.next()
        assert member is not None and (member.name, member.size) == ("big", over)


def test_names_use_the_ustar_prefix_then_pax() -> None:
    split = "d" * 120 + "/" + "f" * 90
    header = tar_header(split, 1)
    assert len(header) == BLOCK  # fits prefix (155) + name (100)
    assert tarfile.TarInfo.frombuf(header, "utf-8", "strict").name == split
    for name in ("x" * 101, "d/" + "f" * 120, "blobs/ünïcode"):
        header = tar_header(name, 3)
        assert len(header) == 3 * BLOCK
        data = header + b"abc" + padding(3) + END_OF_ARCHIVE
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            (member,) = tf.getmembers()
            assert member.name == name
            f = tf.extractfile(member)
            assert f is not None and f.read() == b"abc"


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        tar_header("x", -1)


# --- plans -------------------------------------------------------------------------------------


def test_single_image_plan(docker_image: BuiltImage, tmp_path: Path) -> None:
    plan = plan_for(docker_image)
    data = write_plan(plan, docker_image, tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tf:
        names = tf.getnames()
        files = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]
    manifest = raw_of(docker_image)
    blobs = [manifest.descriptor(), *docker_image.blobs]
    assert names == [
        "oci-layout",
        "index.json",
        "manifest.json",
        "blobs",
        "blobs/sha256",
        *(blob_path(d.digest) for d in blobs),
    ]
    assert len(docker_image.layers) == 3 and len(blobs) == 4  # the repeated layer is in once
    assert files["oci-layout"] == OCI_LAYOUT
    for desc in blobs:
        assert files[blob_path(desc.digest)] == docker_image.read_blob(desc.digest)
    index = json.loads(files["index.json"])
    assert index == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": len(manifest.data),
                "annotations": {
                    ANNOTATION_CONTAINERD_NAME: "127.0.0.1:5000/team/app:1.0",
                    ANNOTATION_REF_NAME: "1.0",
                },
            }
        ],
    }
    assert json.loads(files["manifest.json"]) == [
        {
            "Config": blob_path(docker_image.config_descriptor.digest),  # type: ignore[union-attr]
            "RepoTags": ["127.0.0.1:5000/team/app:1.0"],
            "Layers": [blob_path(d.digest) for d in docker_image.layers],
        }
    ]
    assert plan.root is not None and plan.root.digest == manifest.digest
    assert [d.digest for d in plan.blobs] == [d.digest for d in blobs]
    assert plan.platforms == ()
    assert len(data) % BLOCK == 0 and data.endswith(END_OF_ARCHIVE)


def test_tar_bytes_are_deterministic(docker_image: BuiltImage, tmp_path: Path) -> None:
    first = write_plan(plan_for(docker_image), docker_image, tmp_path / "1.tar")
    second = write_plan(plan_for(docker_image), docker_image, tmp_path / "2.tar")
    assert first == second
    stamped = write_plan(plan_for(docker_image, mtime=1700000000), docker_image, tmp_path / "3.tar")
    assert len(stamped) == len(first) and stamped != first
    with tarfile.open(tmp_path / "3.tar") as tf:
        assert {m.mtime for m in tf.getmembers()} == {1700000000}


def test_all_platforms_plan(oci_index: BuiltImage, tmp_path: Path) -> None:
    plan = plan_for(oci_index, Reference.parse("nginx:1.17.6"), all_platforms=True)
    write_plan(plan, oci_index, tmp_path / "all.tar")
    with tarfile.open(tmp_path / "all.tar") as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert (entry["digest"], entry["mediaType"]) == (oci_index.digest, OCI_INDEX)
    assert entry["annotations"][ANNOTATION_CONTAINERD_NAME] == "docker.io/library/nginx:1.17.6"
    assert "platform" not in entry
    docker = json.loads(files["manifest.json"])
    assert [d["RepoTags"] for d in docker] == [["docker.io/library/nginx:1.17.6"], []]
    expected = {oci_index.digest, *(c.digest for c in oci_index.children)}
    expected |= {d.digest for d in oci_index.blobs}
    assert {blob_path(d) for d in expected} == {n for n in files if n.startswith("blobs/")}
    assert len(plan.blobs) == len(expected) == 1 + 2 + 2 + 3  # shared zstd layer once
    assert plan.platforms == ("linux/amd64", "linux/arm64/v8")
    # Manifests and configs first, then layers.
    first_layer = next(i for i, d in enumerate(plan.blobs) if "layer" in d.media_type)
    assert all("layer" in d.media_type for d in plan.blobs[first_layer:])


def test_one_platform_of_an_index(oci_index: BuiltImage, tmp_path: Path) -> None:
    plan = plan_for(oci_index, platform="linux/arm64")
    write_plan(plan, oci_index, tmp_path / "arm.tar")
    child = oci_index.child("linux/arm64")
    assert plan.root is not None
    assert plan.root.digest == child.digest
    assert plan.root.platform == Platform("linux", "arm64", "v8")
    assert plan.platforms == ("linux/arm64/v8",)
    assert oci_index.digest not in {d.digest for d in plan.blobs}
    with tarfile.open(tmp_path / "arm.tar") as tf:
        index = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["platform"] == {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
    }


def test_digest_reference_has_no_repo_tags(docker_image: BuiltImage) -> None:
    ref = Reference.parse("127.0.0.1:5000/team/app@" + docker_image.digest)
    plan = plan_for(docker_image, ref)
    entries = {e.name: e.source for e in plan.entries}
    index = json.loads(entries["index.json"])  # type: ignore[arg-type]
    assert index["manifests"][0]["annotations"] == {
        ANNOTATION_CONTAINERD_NAME: f"127.0.0.1:5000/team/app@{docker_image.digest}"
    }
    assert json.loads(entries["manifest.json"])[0]["RepoTags"] == []  # type: ignore[arg-type]


def test_held_blob_bytes_go_inline(docker_image: BuiltImage) -> None:
    config = docker_image.config_descriptor
    assert config is not None and docker_image.config is not None
    plan = plan_for(docker_image, blob_bytes={config.digest: docker_image.config})
    sources = [e.source for e in plan.entries if isinstance(e.source, BlobSource)]
    assert config.digest not in {s.descriptor.digest for s in sources}
    assert len(sources) == 2
    with pytest.raises(DigestMismatch):
        plan_for(docker_image, blob_bytes={config.digest: docker_image.config[:-1] + b" "})
    with pytest.raises(ManifestError):
        plan_for(docker_image, blob_bytes={config.digest: docker_image.config + b" "})


def test_incomplete_inputs_are_refused(oci_index: BuiltImage, docker_image: BuiltImage) -> None:
    top = raw_of(oci_index)
    kids = [raw_of(c) for c in oci_index.children]
    with pytest.raises(ManifestError, match="was not provided"):
        plan_image_tar(REF, top, kids[:1], all_platforms=True)
    with pytest.raises(ManifestError, match="one platform"):
        plan_image_tar(REF, top, kids)
    with pytest.raises(ManifestError, match="not listed"):
        plan_image_tar(REF, top, [raw_of(docker_image)])


def test_compose_pieces_rebuild_the_tar(docker_image: BuiltImage, tmp_path: Path) -> None:
    plan = plan_for(docker_image)
    data = write_plan(plan, docker_image, tmp_path / "c.tar")
    pieces = to_compose_pieces(plan, layout.blob_key_for)
    assert not any(
        isinstance(a, Inline) and isinstance(b, Inline) for a, b in itertools.pairwise(pieces)
    )
    copies = [p for p in pieces if isinstance(p, CopyRange)]
    assert [c.key for c in copies] == [
        layout.blob_key(e.source.descriptor.digest)
        for e in plan.entries
        if isinstance(e.source, BlobSource)
    ]
    rebuilt = b""
    by_key = {layout.blob_key(d.digest): docker_image.read_blob(d.digest) for d in plan.blobs}
    for piece in pieces:
        if isinstance(piece, Inline):
            rebuilt += piece.data
        else:
            rebuilt += by_key[piece.key][piece.start : piece.start + piece.length]
    assert rebuilt == data
    assert sum(p.size for p in pieces) == plan.total_size
    # Headers, manifest.json, index.json and the manifest blob travel as one inline piece.
    assert isinstance(pieces[0], Inline) and isinstance(pieces[1], CopyRange)


def test_write_tar_checks_every_blob(docker_image: BuiltImage, tmp_path: Path) -> None:
    plan = plan_for(docker_image)
    layer = docker_image.layers[0]
    good = docker_image.read_blob(layer.digest)

    def serve(content: bytes) -> Callable[[Descriptor], Readable]:
        def open_blob(desc: Descriptor) -> Readable:
            if desc.digest == layer.digest:
                return io.BytesIO(content)
            return docker_image.blob_path(desc.digest).open("rb")

        return open_blob

    with pytest.raises(TransferError, match="ended"):
        write_tar(plan, io.BytesIO(), serve(good[:-10]))
    with pytest.raises(TransferError, match="longer"):
        write_tar(plan, io.BytesIO(), serve(good + b"x"))
    flipped = bytes([good[0] ^ 1]) + good[1:]
    with pytest.raises(DigestMismatch):
        write_tar(plan, io.BytesIO(), serve(flipped))
    sink = io.BytesIO()
    assert write_tar(plan, sink, serve(flipped), verify=False) == plan.total_size


def test_pieces_account_for_every_byte(oci_index: BuiltImage) -> None:
    plan = plan_for(oci_index, all_platforms=True)
    sizes = [len(p) if isinstance(p, bytes) else p.descriptor.size for p in plan.pieces()]
    assert sum(sizes) == plan.total_size
    assert all(isinstance(p, bytes | BlobSource) for p in plan.pieces())


# --- the readers that must accept it ------------------------------------------------------


@pytest.mark.integration
def test_skopeo_reads_both_formats(
    docker_image: BuiltImage, oci_index: BuiltImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    single = tmp_path / "single.tar"
    write_plan(plan_for(docker_image), docker_image, single)
    as_oci = skopeo.inspect(f"oci-archive:{single}")
    assert as_oci["Digest"] == docker_image.digest
    # (skopeo 1.9 cannot look a Docker-typed manifest up by tag in a layout: no `:1.0` here.)
    assert skopeo.inspect(f"oci-archive:{single}", raw=True) == docker_image.manifest
    as_docker = skopeo.inspect(f"docker-archive:{single}")
    assert as_docker["Layers"] == list(docker_image.diff_ids)  # skopeo names layers by diff_id
    assert as_docker["Architecture"] == "amd64"

    every = tmp_path / "all.tar"
    write_plan(plan_for(oci_index, all_platforms=True), oci_index, every)
    assert skopeo.inspect(f"oci-archive:{every}:1.0", raw=True) == oci_index.manifest
    arm = skopeo.inspect(f"docker-archive:{every}:@1")
    assert arm["Architecture"] == "arm64"
    tagged = skopeo.inspect(f"docker-archive:{every}:127.0.0.1:5000/team/app:1.0")
    assert tagged["Architecture"] == "amd64"

    # A copy out of the tar as oci-archive keeps every digest.
    out = tmp_path / "out"
    skopeo.copy(f"oci-archive:{every}", f"oci:{out}", "--all", "--preserve-digests")
    copied = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
    assert copied == oci_index.digest


@pytest.mark.integration
def test_podman_loads_the_tar(
    docker_image: BuiltImage, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman is not installed")
    tar = tmp_path / "p.tar"
    write_plan(plan_for(docker_image), docker_image, tar)
    run_root = Path(tempfile.mkdtemp(prefix="bale-podman-"))  # podman: runroot < 50 chars
    request.addfinalizer(lambda: shutil.rmtree(run_root, ignore_errors=True))
    base = [
        podman,
        "--storage-driver=vfs",
        f"--root={tmp_path / 'root'}",
        f"--runroot={run_root}",
        "--events-backend=none",
        "--cgroup-manager=cgroupfs",
    ]
    started = time.monotonic()
    load = subprocess.run([*base, "load", "-i", str(tar)], capture_output=True, timeout=300)
    assert load.returncode == 0, load.stderr.decode()
    assert time.monotonic() - started < 60
    images = subprocess.run(
        [*base, "images", "--format", "json"], capture_output=True, timeout=120, check=True
    )
    (image,) = json.loads(images.stdout)
    assert "127.0.0.1:5000/team/app:1.0" in image["Names"]
    assert image["Digest"] == docker_image.digest


def test_attestations_stay_out_of_manifest_json(image_factory: ImageFactory) -> None:
    """A buildx-style index: arm64 first, amd64 second, plus an attestation manifest."""
    base = image_factory.index(["linux/arm64", "linux/amd64"], [LayerSpec(600, seed=501)])
    statement = b'{"_type":"https://in-toto.io/Statement/v0.1"}'
    config = b"{}"
    attestation = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": Descriptor(
                "application/vnd.oci.image.config.v1+json", sha256_digest(config), len(config)
            ).to_json(),
            "layers": [
                Descriptor(
                    "application/vnd.in-toto+json", sha256_digest(statement), len(statement)
                ).to_json()
            ],
        }
    ).encode()
    att_desc = Descriptor(
        OCI_MANIFEST,
        sha256_digest(attestation),
        len(attestation),
        Platform("unknown", "unknown"),
        {"vnd.docker.reference.type": "attestation-manifest"},
    ).to_json()
    index_obj = json.loads(base.manifest)
    index_obj["manifests"].append(att_desc)
    top = RawManifest.from_bytes(json.dumps(index_obj).encode())
    kids = [raw_of(c) for c in base.children] + [RawManifest.from_bytes(attestation)]
    plan = plan_image_tar(REF, top, kids, all_platforms=True)
    entries = {e.name: e.source for e in plan.entries}
    docker = json.loads(entries["manifest.json"])  # type: ignore[arg-type]
    amd64 = base.child("linux/amd64").config_descriptor
    assert amd64 is not None
    assert [d["RepoTags"] for d in docker] == [[], ["127.0.0.1:5000/team/app:1.0"]]
    assert docker[1]["Config"] == blob_path(amd64.digest)
    assert plan.platforms == ("linux/arm64", "linux/amd64")
    for blob in (attestation, config, statement):
        assert blob_path(sha256_digest(blob)) in entries
