"""The store layout: exact keys, validation, parsers, and a stock registry agreeing with both.

The two integration tests check the layout against distribution itself (Debian's
docker-registry 2.8.2): what it writes when skopeo pushes is exactly what these functions name,
and a read-only registry serves an image whose files were laid out by these functions alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.archive import layout
from pipeline.errors import InvalidReference
from pipeline.oci import DOCKER_MANIFEST, RawManifest
from pipeline.refs import Reference
from tests.bed.fixtures_registry import RegistryFactory
from tests.bed.images import ImageFactory, LayerSpec, Skopeo
from tests.bed.registry import FilesystemStorage, RegistryServer

HEX = "ab" + "0" * 62
DIGEST = f"sha256:{HEX}"
HEX2 = "cd" + "1" * 62
DIGEST2 = f"sha256:{HEX2}"
REPO = "127.0.0.1-5000/team/app"
V2 = "docker/registry/v2"


def test_blob_key_is_distributions_split_path() -> None:
    assert layout.blob_key(DIGEST) == f"{V2}/blobs/sha256/ab/{HEX}/data"
    assert layout.digest_from_blob_key(layout.blob_key(DIGEST)) == DIGEST
    assert layout.digest_from_blob_key(f"{V2}/blobs/sha256/cd/{HEX}/data") is None
    assert layout.digest_from_blob_key(f"{V2}/blobs/sha256/ab/{HEX}/data.tmp") is None
    assert layout.digest_from_blob_key("images/x/y.tar") is None


def test_link_keys() -> None:
    base = f"{V2}/repositories/{REPO}"
    assert layout.layer_link_key(REPO, DIGEST) == f"{base}/_layers/sha256/{HEX}/link"
    assert (
        layout.revision_link_key(REPO, DIGEST) == f"{base}/_manifests/revisions/sha256/{HEX}/link"
    )
    assert layout.tag_current_link_key(REPO, "1.0") == f"{base}/_manifests/tags/1.0/current/link"
    assert (
        layout.tag_index_link_key(REPO, "1.0", DIGEST)
        == f"{base}/_manifests/tags/1.0/index/sha256/{HEX}/link"
    )
    assert layout.uploads_prefix(REPO) == f"{base}/_uploads/"


def test_link_body_is_the_bare_digest() -> None:
    assert layout.link_body(DIGEST) == DIGEST.encode()
    assert layout.parse_link_body(DIGEST.encode()) == DIGEST
    assert layout.parse_link_body(DIGEST.encode() + b"\n") == DIGEST
    assert layout.parse_link_body(b"sha256:xyz") is None
    assert layout.parse_link_body(b"\xff\xfe") is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: layout.blob_key("sha256:" + "A" * 64),
        lambda: layout.blob_key("sha256:abc"),
        lambda: layout.blob_key("md5:" + "0" * 32),
        lambda: layout.blob_key("sha512:" + "0" * 128),  # valid digest, not stored by sha512
        lambda: layout.layer_link_key("../etc", DIGEST),
        lambda: layout.layer_link_key("/abs/repo", DIGEST),
        lambda: layout.layer_link_key("a//b", DIGEST),
        lambda: layout.revision_link_key("Team/App", DIGEST),
        lambda: layout.tag_current_link_key(REPO, "../x"),
        lambda: layout.tag_current_link_key(REPO, ".hidden"),
        lambda: layout.tag_current_link_key(REPO, "a/b"),
        lambda: layout.tar_key(REPO),
        lambda: layout.tar_key("a/../b", tag="1"),
        lambda: layout.record_key(REPO, tag="x" * 129),
        lambda: layout.link_body("sha256:" + "0" * 63),
    ],
)
def test_invalid_names_never_become_keys(call: object) -> None:
    with pytest.raises(InvalidReference):
        call()  # type: ignore[operator]


def test_tar_and_record_keys() -> None:
    assert layout.tar_key(REPO, tag="1.0") == f"images/{REPO}/1.0.tar"
    assert layout.record_key(REPO, tag="1.0") == f"images/{REPO}/1.0.json"
    assert layout.tar_key(REPO, digest=DIGEST) == f"images/{REPO}/sha256-{HEX}.tar"
    assert layout.record_key(REPO, digest=DIGEST) == f"images/{REPO}/sha256-{HEX}.json"
    # Pinned by digest: named by the digest even with a tag.
    assert layout.tar_key(REPO, tag="1.0", digest=DIGEST) == f"images/{REPO}/sha256-{HEX}.tar"
    assert layout.record_key_of_tar(f"images/{REPO}/1.0.tar") == f"images/{REPO}/1.0.json"
    with pytest.raises(InvalidReference):
        layout.record_key_of_tar(f"{V2}/blobs/x.tar")


def test_keys_for_references() -> None:
    hub = Reference.parse("nginx:1.17.6")
    assert layout.tar_key_for(hub) == "images/docker.io/library/nginx/1.17.6.tar"
    local = Reference.parse("127.0.0.1:5000/team/app@" + DIGEST)
    assert layout.record_key_for(local) == f"images/{REPO}/sha256-{HEX}.json"
    upper = Reference.parse("Registry.Example.COM:443/a/b:v1")
    assert layout.tar_key_for(upper) == "images/registry.example.com-443/a/b/v1.tar"


def test_parse_image_keys() -> None:
    k = layout.parse_image_key(f"images/{REPO}/1.0.tar")
    assert k == layout.ImageKey(key=f"images/{REPO}/1.0.tar", repo=REPO, kind="tar", tag="1.0")
    d = layout.parse_image_key(f"images/{REPO}/sha256-{HEX}.json")
    assert d is not None and (d.kind, d.digest, d.tag) == ("record", DIGEST, None)
    assert layout.parse_image_key(f"images/{REPO}/notes.txt") is None
    assert layout.parse_image_key("images/x.tar") is None
    assert layout.parse_image_key("images/UPPER/x/1.tar") is None
    assert layout.parse_image_key(f"images/{REPO}/.x.tar") is None
    keys = [
        f"images/{REPO}/1.0.tar",
        f"images/{REPO}/1.0.json",
        "images/docker.io/library/nginx/sha256-" + HEX + ".tar",
        "images/README",
    ]
    for key in keys[:3]:
        parsed = layout.parse_image_key(key)
        assert parsed is not None
        builder = layout.tar_key if parsed.kind == "tar" else layout.record_key
        assert builder(parsed.repo, parsed.tag, parsed.digest) == key


def test_tags_from_keys() -> None:
    keys = [
        layout.tag_current_link_key(REPO, "1.0"),
        layout.tag_index_link_key(REPO, "1.0", DIGEST),
        layout.tag_index_link_key(REPO, "gone", DIGEST),  # index only: not a tag
        layout.tag_current_link_key(REPO, "latest"),
        layout.layer_link_key("docker.io/library/nginx", DIGEST),
        layout.revision_link_key(REPO + "/sub", DIGEST2),
        layout.uploads_prefix("other/repo") + "abc/startedat",
        layout.blob_key(DIGEST),
    ]
    assert layout.tags_from_keys(REPO, keys) == ["1.0", "latest"]


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


@pytest.mark.integration
def test_keys_match_what_distribution_writes(
    registry: RegistryServer, image_factory: ImageFactory, unique_repo: str
) -> None:
    """skopeo pushes to a stock registry; every file it stores is a key named here."""
    image = image_factory.image([LayerSpec(2000, seed=11), LayerSpec(3000, "none", seed=12)])
    pushed = image_factory.push(image, f"{unique_repo}:v1", registry)
    assert isinstance(registry.storage, FilesystemStorage)
    files = _files(registry.storage.rootdirectory)
    repo = pushed.repository
    assert repo is not None
    store_repo = repo.split("/", 1)[1]  # the registry's own name: no host
    manifest = RawManifest.from_bytes(image.manifest)
    expected_links = {
        layout.tag_current_link_key(store_repo, "v1"): manifest.digest,
        layout.tag_index_link_key(store_repo, "v1", manifest.digest): manifest.digest,
        layout.revision_link_key(store_repo, manifest.digest): manifest.digest,
        **{layout.layer_link_key(store_repo, d.digest): d.digest for d in image.blobs},
    }
    for key, digest in expected_links.items():
        assert files[key] == layout.link_body(digest), key
    for desc in (*image.blobs, manifest.descriptor()):
        assert files[layout.blob_key(desc.digest)] == image.read_blob(desc.digest)
    ours = {k for k in files if k.startswith(layout.repository_prefix(store_repo))}
    assert ours == set(expected_links)
    assert layout.tags_from_keys(store_repo, files) == ["v1"]


@pytest.mark.integration
def test_stock_registry_serves_a_tree_laid_out_here(
    make_registry: RegistryFactory, image_factory: ImageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Files written only by these key functions: a read-only registry serves them by tag."""
    image = image_factory.image(
        [LayerSpec(1500, seed=21), LayerSpec(700, "none", seed=22)], format="docker"
    )
    root = tmp_path / "bucket"
    repo = "127.0.0.1-5000/team/served"
    manifest = RawManifest.from_bytes(image.manifest)
    assert manifest.media_type == DOCKER_MANIFEST

    def put(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    for desc in image.blobs:
        put(layout.blob_key(desc.digest), image.read_blob(desc.digest))
        put(layout.layer_link_key(repo, desc.digest), layout.link_body(desc.digest))
    put(layout.blob_key(manifest.digest), manifest.data)
    put(layout.revision_link_key(repo, manifest.digest), layout.link_body(manifest.digest))
    put(layout.tag_index_link_key(repo, "1.0", manifest.digest), layout.link_body(manifest.digest))
    put(layout.tag_current_link_key(repo, "1.0"), layout.link_body(manifest.digest))

    server = make_registry(storage=FilesystemStorage(root), readonly=True)
    try:
        raw = skopeo.inspect(f"docker://{server.host}/{repo}:1.0", raw=True)
        assert raw == manifest.data
        out = tmp_path / "copy"
        skopeo.copy(f"docker://{server.host}/{repo}:1.0", f"dir:{out}", "--src-tls-verify=false")
        assert (out / "manifest.json").read_bytes() == manifest.data
        for desc in image.blobs:
            assert (out / desc.hex).read_bytes() == image.read_blob(desc.digest)
    finally:
        server.stop()
