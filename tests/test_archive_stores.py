"""Issue 4's proofs with real tools: S3/OSS buckets, stock registries serving the archive,
dedup by access-log counts, composition bytes, podman/skopeo reading the tars."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.copy.session import RegistryOptions, Session
from pipeline.ops.archive import ArchiveOptions, Archiver
from pipeline.refs import Reference
from pipeline.store.local import LocalStore
from pipeline.store.multipart import S3_LIMITS
from pipeline.store.oss import OSSStore
from pipeline.store.s3 import S3Store
from tests.bed.cli import isolated_env, run_bale
from tests.bed.fixtures_store import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_REGION
from tests.bed.images import LayerSpec, podman_load
from tests.bed.moto import ACCESS_KEY, MOTO_KEYS, REGION, SECRET_KEY
from tests.bed.registry import FilesystemStorage, S3Storage

pytestmark = pytest.mark.integration
MiB = 1 << 20


def _archive(bucket: ArchiveBucket, ref: str, creds=None, **opts: object):
    with Session() as session:
        return Archiver(bucket, session).archive(
            Reference.parse(ref),
            RegistryOptions(credentials=creds, tls_verify=False),
            ArchiveOptions(**opts),
        )


def _s3_env(moto_server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL=moto_server.endpoint_url,
    )
    return env


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    for k, v in _s3_env(moto_server).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _s3_bucket(moto_server, prefix: str = "archive") -> tuple[ArchiveBucket, str]:
    name = moto_server.create_bucket()
    store = S3Store(name, prefix, endpoint_url=moto_server.endpoint_url)
    return ArchiveBucket(store), name


def test_dedup_and_stock_registry_serves_local_archive(
    registry, make_registry, image_factory, skopeo, unique_repo, tmp_path: Path
):
    base = (LayerSpec(300_000, seed=101), LayerSpec(200_000, seed=102))
    first = image_factory.image(layers=base)
    second = image_factory.image(layers=(*base, LayerSpec(50_000, seed=103)))
    a = image_factory.push(first, f"{registry.host}/{unique_repo}/a:1", registry)
    b = image_factory.push(second, f"{registry.host}/{unique_repo}/b:1", registry)
    root = tmp_path / "archive"
    bucket = ArchiveBucket(LocalStore(root))
    assert _archive(bucket, f"{registry.host}/{unique_repo}/a:1").status == "archived"

    mark = registry.mark()
    result = _archive(bucket, f"{registry.host}/{unique_repo}/b:1")
    assert result.status == "archived", result.error
    for layer in first.layers:  # shared base layers: neither downloaded nor uploaded again
        assert registry.count("GET", f"/blobs/{layer.digest}", since=mark) == 0
    assert registry.count("GET", f"/blobs/{second.layers[2].digest}", since=mark) == 1
    assert result.bytes_already_stored >= sum(layer.size for layer in first.layers)
    assert result.bytes_downloaded < 50_000 + 10_000

    stock = make_registry(storage=FilesystemStorage(root), readonly=True)
    for pushed, name in ((a, "a"), (b, "b")):
        src = f"docker://{stock.host}/{registry.host.replace(':', '-')}/{unique_repo}/{name}:1"
        assert skopeo.inspect(src)["Digest"] == pushed.digest
        out = tmp_path / f"pulled-{name}"
        skopeo.copy(src, f"oci:{out}", "--src-tls-verify=false")
        assert (out / "index.json").exists()


def test_archive_to_s3_composes_tar_server_side_and_registry_serves_it(
    registry, make_registry, moto_server, image_factory, skopeo, unique_repo, tmp_path, s3_env
):
    layers = (
        LayerSpec(12 * MiB, seed=201),
        LayerSpec(11 * MiB, seed=202),
        LayerSpec(3000, seed=203),
    )
    image = image_factory.image(layers=layers)
    pushed = image_factory.push(image, f"{registry.host}/{unique_repo}:big", registry)
    bucket, name = _s3_bucket(moto_server, "team/archive")
    ref = f"{registry.host}/{unique_repo}:big"
    first = _archive(bucket, ref)
    assert first.status == "archived", first.error

    # Re-archiving with --force moves no blob: what goes up is the tar's own share.
    again = _archive(bucket, ref, force=True)
    assert again.bytes_downloaded == 0
    tar_size = json.loads(bucket.store.read(layout.record_key_for(Reference.parse(ref))))["sizes"][
        "tar"
    ]
    budget = 0.01 * tar_size + len(layers) * S3_LIMITS.min_part
    assert again.bytes_uploaded < budget, (again.bytes_uploaded, budget)
    assert again.bytes_copied_server_side > 12 * MiB  # all but the first part of each layer

    tar = tmp_path / "from-s3.tar"
    tar.write_bytes(bucket.store.read(layout.tar_key_for(Reference.parse(ref))))
    assert skopeo.inspect(f"oci-archive:{tar}")["Digest"] == pushed.digest
    assert len(skopeo.inspect(f"docker-archive:{tar}")["Layers"]) == 3

    stock = make_registry(
        storage=S3Storage(
            regionendpoint=moto_server.endpoint_url,
            bucket=name,
            accesskey=ACCESS_KEY,
            secretkey=SECRET_KEY,
            rootdirectory="/team/archive",
        ),
        readonly=True,
    )
    src = f"docker://{stock.host}/{registry.host.replace(':', '-')}/{unique_repo}:big"
    assert skopeo.inspect(src)["Digest"] == pushed.digest
    skopeo.copy(src, f"oci:{tmp_path / 'pulled'}", "--src-tls-verify=false")


def test_archive_to_oss_composes(registry, oss_server, image_factory, unique_repo, tmp_path):
    layers = (LayerSpec(6 * MiB, seed=301), LayerSpec(2000, seed=302))
    pushed = image_factory.push(
        image_factory.image(layers=layers), f"{registry.host}/{unique_repo}:o", registry
    )
    store = OSSStore(
        oss_server.create_bucket(),
        "arch",
        endpoint=oss_server.endpoint,
        access_key_id=OSS_ACCESS_KEY_ID,
        access_key_secret=OSS_ACCESS_KEY_SECRET,
        region=OSS_REGION,
    )
    bucket = ArchiveBucket(store)
    ref = f"{registry.host}/{unique_repo}:o"
    assert _archive(bucket, ref).status == "archived"
    again = _archive(bucket, ref, force=True)
    assert again.bytes_copied_server_side > 5 * MiB
    tar = tmp_path / "o.tar"
    tar.write_bytes(store.read(layout.tar_key_for(Reference.parse(ref))))
    out = subprocess.run(
        ["skopeo", "inspect", f"oci-archive:{tar}"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["Digest"] == pushed.digest


def test_multi_arch(registry, image_factory, skopeo, unique_repo, tmp_path):
    index = image_factory.index(
        platforms=("linux/amd64", "linux/arm64"), layers=(LayerSpec(4000, seed=401),)
    )
    pushed = image_factory.push(index, f"{registry.host}/{unique_repo}:multi", registry)
    ref = Reference.parse(f"{registry.host}/{unique_repo}:multi")

    bucket = ArchiveBucket(LocalStore(tmp_path / "default"))
    assert _archive(bucket, str(ref)).status == "archived"
    assert bucket.tag_digest(ref.store_repo, "multi") == pushed.digest
    for child in pushed.children:  # the whole index is stored
        assert bucket.has_blob(child.descriptor)
    tar = tmp_path / "default" / layout.tar_key_for(ref)
    amd64 = pushed.child("linux/amd64")
    assert skopeo.inspect(f"oci-archive:{tar}")["Digest"] == amd64.digest

    bucket = ArchiveBucket(LocalStore(tmp_path / "all"))
    assert _archive(bucket, str(ref), all_platforms=True).status == "archived"
    tar = tmp_path / "all" / layout.tar_key_for(ref)
    assert skopeo.inspect(f"oci-archive:{tar}")["Digest"] == pushed.digest

    from pipeline.oci import Platform

    bucket = ArchiveBucket(LocalStore(tmp_path / "arm"))
    arm = pushed.child("linux/arm64")
    assert _archive(bucket, str(ref), platform=Platform.parse("linux/arm64")).status == "archived"
    assert bucket.tag_digest(ref.store_repo, "multi") == arm.digest
    assert not bucket.has_blob(amd64.descriptor)


def test_podman_loads_and_skopeo_restores_the_tar(
    registry, image_factory, unique_repo, tmp_path, skopeo
):
    pushed = image_factory.push(
        image_factory.image(layers=(LayerSpec(8000, seed=501), LayerSpec(9000, seed=502))),
        f"{registry.host}/{unique_repo}:p",
        registry,
    )
    bucket = ArchiveBucket(LocalStore(tmp_path / "s"))
    ref = Reference.parse(f"{registry.host}/{unique_repo}:p")
    assert _archive(bucket, str(ref)).status == "archived"
    tar = tmp_path / "s" / layout.tar_key_for(ref)
    assert f"{ref.name}:p" in podman_load(tar, tmp_path / "pr")
    skopeo.copy(
        f"oci-archive:{tar}",
        f"docker://{registry.host}/{unique_repo}-back:p",
        "--dest-tls-verify=false",
        "--preserve-digests",
    )
    assert (
        skopeo.inspect(f"docker://{registry.host}/{unique_repo}-back:p")["Digest"] == pushed.digest
    )


def test_corrupt_blob_is_never_stored(registry, image_factory, unique_repo, tmp_path):
    image = image_factory.image(layers=(LayerSpec(40_000, seed=601),))
    image_factory.push(image, f"{registry.host}/{unique_repo}:bad", registry)
    layer = image.layers[0]
    data = (
        registry.storage.rootdirectory
        / "docker/registry/v2/blobs/sha256"
        / layer.hex[:2]
        / layer.hex
        / "data"
    )
    raw = bytearray(data.read_bytes())
    raw[-100] ^= 0xFF
    data.write_bytes(bytes(raw))
    root = tmp_path / "s"
    result = _archive(ArchiveBucket(LocalStore(root)), f"{registry.host}/{unique_repo}:bad")
    assert result.status == "failed"
    assert "sha256" in (result.error or "")
    files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    assert not [f for f in files if layer.hex in str(f)]
    assert not [f for f in files if "/_manifests/tags/" in str(f) or "images/" in str(f)]


def test_no_local_disk(registry, moto_server, image_factory, unique_repo, tmp_path):
    pushed = image_factory.push(
        image_factory.image(layers=(LayerSpec(256 * MiB, seed=701),)),
        f"{registry.host}/{unique_repo}:huge",
        registry,
    )
    name = moto_server.create_bucket()
    tmp, cwd, home = tmp_path / "tmp", tmp_path / "cwd", tmp_path / "home"
    for d in (tmp, cwd, home):
        d.mkdir()
    env = isolated_env(
        tmp_path,
        **MOTO_KEYS,
        AWS_ENDPOINT_URL=moto_server.endpoint_url,
        TMPDIR=str(tmp),
        HOME=str(home),
    )
    cwd.chmod(0o555)
    proc = run_bale(
        "archive",
        f"docker://{registry.host}/{unique_repo}:huge",
        "--to",
        f"s3://{name}/p",
        "--src-tls-verify=false",
        cwd=cwd,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert pushed.digest in proc.stdout
    assert list(tmp.iterdir()) == [] and list(cwd.iterdir()) == [] and list(home.iterdir()) == []
