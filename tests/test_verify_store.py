"""`bale verify` against real stores: images archived from a real registry to a local directory
and to S3 (moto_server), then damaged one way at a time. Each kind of damage must come out as
exactly one fault of the right kind at the right key, and the CLI must exit 1 with one line."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.record import ImageRecord
from pipeline.copy.session import RegistryOptions, Session
from pipeline.oci import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    sha256_digest,
)
from pipeline.ops.archive import ArchiveOptions, Archiver
from pipeline.ops.verify import Fault, VerifyReport, verify_store
from pipeline.refs import Reference
from pipeline.store.local import LocalStore
from tests.bed.cli import isolated_env, run_bale
from tests.bed.image_pair import Pushed, archive_both, push_pair
from tests.bed.images import LayerSpec
from tests.bed.moto import MOTO_KEYS


@pytest.fixture(scope="module")
def pushed(registry: Any, image_factory: Any) -> Pushed:
    return push_pair(registry, image_factory)


def flip(data: bytes, at: int | None = None) -> bytes:
    """The same number of bytes with one byte changed (a bit flip on disk)."""
    at = len(data) // 2 if at is None else at
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def only(report: VerifyReport) -> Fault:
    assert len(report.faults) == 1, [str(f) for f in report.faults]
    return report.faults[0]


# ---- local store ---------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path, pushed: Pushed) -> tuple[Path, ArchiveBucket, ImageRecord, ImageRecord]:
    root = tmp_path / "store"
    bucket = ArchiveBucket(LocalStore(root, fsync=False))
    a, b = archive_both(bucket, pushed)
    return root, bucket, a, b


pytestmark = pytest.mark.integration


def test_clean_store_verifies_with_counts(local, pushed: Pushed) -> None:
    root, bucket, a, b = local
    report = verify_store(bucket, jobs=3)
    assert report.ok, [str(f) for f in report.faults]
    distinct = {x.digest for x in (*a.blobs, *b.blobs)}
    assert len(distinct) == 7  # 2 manifests, 2 configs, 3 layers (one shared)
    assert report.records == 2 and report.tars == 2
    assert report.blobs == len(distinct)
    stored = sum((root / layout.blob_key(d)).stat().st_size for d in distinct)
    tar_entries = sum(x.size for x in a.blobs) + sum(x.size for x in b.blobs)
    assert report.bytes_hashed == stored + tar_entries
    # links: per image a tag current + index link, one revision, a config and two layer links
    assert report.links == 2 * 6

    proc = run_bale("verify", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert "no faults" in proc.stderr


def test_deep_checks_gzip_and_zstd_diff_ids(local) -> None:
    _root, bucket, a, b = local
    report = verify_store(bucket, deep=True)
    assert report.ok, [str(f) for f in report.faults]
    layers = {x.digest: x.size for x in (*a.blobs, *b.blobs) if "layer" in x.media_type}
    assert len(layers) == 3
    # every layer decompressed: each holds a tar a little larger than its payload
    assert report.bytes_decompressed > 6000 + 9000 + 7000


def test_corrupt_blob_is_one_fault(local, pushed: Pushed) -> None:
    root, bucket, _a, _b = local
    path = root / layout.blob_key(pushed.a_only)
    path.write_bytes(flip(path.read_bytes()))
    fault = only(verify_store(bucket))
    assert (fault.kind, fault.key) == ("blob-corrupt", layout.blob_key(pushed.a_only))

    proc = run_bale("verify", str(root))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [str(fault)]
    assert proc.stdout.startswith(
        f"blob-corrupt {layout.blob_key(pushed.a_only)} hashes to sha256:"
    )


def test_corrupt_shared_blob_is_one_fault_and_named_images_share_it(local, pushed: Pushed) -> None:
    root, bucket, _a, _b = local
    path = root / layout.blob_key(pushed.shared)
    path.write_bytes(flip(path.read_bytes(), at=0))
    fault = only(verify_store(bucket, deep=True))
    assert (fault.kind, fault.key) == ("blob-corrupt", layout.blob_key(pushed.shared))
    for ref in (pushed.a, pushed.b):
        fault = only(verify_store(bucket, [Reference.parse(ref)]))
        assert fault.kind == "blob-corrupt"


def test_named_image_checks_only_its_own_blobs(local, pushed: Pushed) -> None:
    root, bucket, _a, b = local
    path = root / layout.blob_key(pushed.a_only)
    path.write_bytes(flip(path.read_bytes()))
    report = verify_store(bucket, [Reference.parse(pushed.b)])
    assert report.ok, [str(f) for f in report.faults]
    assert report.records == 1 and report.tars == 1
    assert report.blobs == len(b.blobs)
    assert only(verify_store(bucket, [Reference.parse(pushed.a)])).kind == "blob-corrupt"

    proc = run_bale("verify", str(root), pushed.b)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_bale("verify", str(root), f"docker://{pushed.a}", "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert [f["kind"] for f in data["faults"]] == ["blob-corrupt"]


def test_missing_blob_is_one_fault(local, pushed: Pushed) -> None:
    root, bucket, _a, _b = local
    (root / layout.blob_key(pushed.shared)).unlink()
    fault = only(verify_store(bucket))
    assert (fault.kind, fault.key) == ("blob-missing", layout.blob_key(pushed.shared))
    assert "needed by" in fault.detail


def test_missing_manifest_is_one_fault(local, pushed: Pushed) -> None:
    root, bucket, _a, _b = local
    (root / layout.blob_key(pushed.b_digest)).unlink()
    fault = only(verify_store(bucket))
    assert (fault.kind, fault.key) == ("blob-missing", layout.blob_key(pushed.b_digest))


def test_blob_of_wrong_size(local, pushed: Pushed) -> None:
    root, bucket, _a, _b = local
    path = root / layout.blob_key(pushed.b_only)
    path.write_bytes(path.read_bytes() + b"tail")
    fault = only(verify_store(bucket))
    assert (fault.kind, fault.key) == ("blob-size", layout.blob_key(pushed.b_only))


def test_missing_tar(local) -> None:
    root, bucket, a, _b = local
    (root / a.tar_key).unlink()
    fault = only(verify_store(bucket))
    assert (fault.kind, fault.key) == ("tar-missing", a.tar_key)
    proc = run_bale("verify", str(root))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [str(fault)]


def test_corrupt_tar_entry(local, pushed: Pushed) -> None:
    root, bucket, _a, b = local
    tar = root / b.tar_key
    data = tar.read_bytes()
    layer = (root / layout.blob_key(pushed.b_only)).read_bytes()
    at = data.index(layer) + len(layer) // 2
    tar.write_bytes(flip(data, at))
    fault = only(verify_store(bucket))
    assert (fault.kind, fault.key) == ("tar-entry-corrupt", b.tar_key)
    assert fault.detail.startswith(f"blobs/sha256/{pushed.b_only[7:]} hashes to ")


def test_truncated_tar(local) -> None:
    root, bucket, a, _b = local
    tar = root / a.tar_key
    tar.write_bytes(tar.read_bytes()[:-1024])
    fault = only(verify_store(bucket))
    assert (fault.kind, fault.key) == ("tar-size", a.tar_key)


def test_link_faults(local, pushed: Pushed) -> None:
    root, bucket, a, b = local
    layer_link = root / layout.layer_link_key(a.repo, pushed.a_only)
    layer_link.unlink()
    revision = root / layout.revision_link_key(b.repo, pushed.b_digest)
    revision.write_bytes(b"sha256:not-a-digest")
    tag = root / layout.tag_current_link_key(b.repo, "1")
    tag.write_bytes(pushed.a_digest.encode())
    faults = {(f.kind, f.key) for f in verify_store(bucket).faults}
    assert faults == {
        ("link-missing", layout.layer_link_key(a.repo, pushed.a_only)),
        ("link-invalid", layout.revision_link_key(b.repo, pushed.b_digest)),
        ("tag-mismatch", layout.tag_current_link_key(b.repo, "1")),
    }


def test_dangling_link_and_bad_record(local) -> None:
    root, bucket, a, _b = local
    stray = "sha256:" + "ab" * 32
    link = layout.layer_link_key(a.repo, stray)
    bucket.store.put(link, layout.link_body(stray))
    (root / a.record_key).write_text("{not json")
    faults = {(f.kind, f.key) for f in verify_store(bucket).faults}
    assert faults == {
        ("blob-missing", layout.blob_key(stray)),
        ("record-invalid", a.record_key),
    }


def test_named_image_without_record(local) -> None:
    _root, bucket, _a, _b = local
    ref = Reference.parse("127.0.0.1:1/nothing/here:1")
    fault = only(verify_store(bucket, [ref]))
    assert (fault.kind, fault.key) == ("record-missing", layout.record_key_for(ref))


# ---- --deep against hand-made layers ---------------------------------------------------------


def _hand_image(store: LocalStore, layer: bytes, diff_id: str) -> str:
    """Store one image by hand (layer, config, manifest, links); its layer's digest."""
    bucket = ArchiveBucket(store)
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    descs = []
    for data, media_type in ((config, OCI_CONFIG), (layer, OCI_LAYER_GZIP)):
        desc = Descriptor(media_type, sha256_digest(data), len(data))
        store.put(layout.blob_key(desc.digest), data)
        descs.append(desc)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descs[0].to_json(),
            "layers": [descs[1].to_json()],
        }
    ).encode()
    digest = sha256_digest(manifest)
    store.put(layout.blob_key(digest), manifest)
    bucket.link_layers("hand/made", [d.digest for d in descs])
    bucket.link_revisions("hand/made", [digest])
    bucket.tag("hand/made", "1", digest)
    return descs[1].digest


def test_deep_finds_wrong_diff_id_and_undecompressable_layer(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "hand", fsync=False)
    tar = b"x" * 10240
    good = _hand_image(store, gzip.compress(tar, mtime=0), sha256_digest(tar))
    assert verify_store(ArchiveBucket(store), deep=True).ok
    for path in (tmp_path / "hand").rglob("*"):
        if path.is_file():
            path.unlink()
    wrong = _hand_image(store, gzip.compress(tar, mtime=0), sha256_digest(b"other"))
    assert wrong == good
    plain = verify_store(ArchiveBucket(store))
    assert plain.ok  # without --deep the diff_ids are not read
    fault = only(verify_store(ArchiveBucket(store), deep=True))
    assert (fault.kind, fault.key) == ("layer-diff-id", layout.blob_key(wrong))
    assert f"decompresses to {sha256_digest(tar)}" in fault.detail

    broken = _hand_image(store, b"\x1f\x8b\x08\x00garbage", sha256_digest(tar))
    faults = {(f.kind, f.key) for f in verify_store(ArchiveBucket(store), deep=True).faults}
    assert ("layer-invalid", layout.blob_key(broken)) in faults


# ---- S3 (moto_server) ------------------------------------------------------------------------


def test_s3_store_clean_then_corrupt_then_missing(
    store_bed: Any, moto_server: Any, pushed: Pushed, tmp_path: Path
) -> None:
    bed = store_bed("s3", prefix="arch")
    bucket = ArchiveBucket(bed.store)
    a, _b = archive_both(bucket, pushed)
    report = verify_store(bucket, deep=True)
    assert report.ok, [str(f) for f in report.faults]
    assert report.records == 2 and report.tars == 2 and report.blobs == 7

    client = moto_server.client()
    key = layout.blob_key(pushed.b_only)
    good = client.get_object(Bucket=bed.store.bucket, Key=bed.full(key))["Body"].read()
    client.put_object(Bucket=bed.store.bucket, Key=bed.full(key), Body=flip(good))
    fault = only(verify_store(bucket))
    assert (fault.kind, fault.key) == ("blob-corrupt", key)

    env = isolated_env(tmp_path, **MOTO_KEYS)
    url = f"s3://{bed.store.bucket}/arch"
    proc = run_bale("verify", url, "--endpoint-url", moto_server.endpoint_url, env=env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [str(fault)]

    client.put_object(Bucket=bed.store.bucket, Key=bed.full(key), Body=good)
    client.delete_object(Bucket=bed.store.bucket, Key=bed.full(a.tar_key))
    fault = only(verify_store(bucket))
    assert (fault.kind, fault.key) == ("tar-missing", a.tar_key)

    config_key = layout.blob_key(pushed.b_config)
    client.delete_object(Bucket=bed.store.bucket, Key=bed.full(config_key))
    faults = {(f.kind, f.key) for f in verify_store(bucket, [Reference.parse(pushed.b)]).faults}
    assert faults == {("blob-missing", config_key)}
    proc = run_bale("verify", url, pushed.b, "--endpoint-url", moto_server.endpoint_url, env=env)
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"blob-missing {config_key} needed by ")


# ---- multi-platform images -------------------------------------------------------------------


def test_index_archives_verify_clean_however_stored(
    registry: Any, image_factory: Any, tmp_path: Path
) -> None:
    """An index stored whole, stored for one platform (its other child absent, by design), in a
    tar of all platforms, and pinned by digest: all verify clean, deep too."""
    repo = f"verify/{uuid.uuid4().hex[:8]}/multi"
    index = image_factory.index(
        platforms=("linux/amd64", "linux/arm64"),
        layers=(LayerSpec(3000, seed=711), LayerSpec(2000, compression="zstd", seed=712)),
    )
    pushed = image_factory.push(index, f"{registry.host}/{repo}:1", registry)
    cases = {
        "default": (f"{registry.host}/{repo}:1", ArchiveOptions()),
        "one": (
            f"{registry.host}/{repo}:1",
            ArchiveOptions(platform=Platform.parse("linux/arm64")),
        ),
        "all": (f"{registry.host}/{repo}:1", ArchiveOptions(all_platforms=True)),
        "pinned": (f"{registry.host}/{repo}@{pushed.digest}", ArchiveOptions()),
    }
    for name, (ref, options) in cases.items():
        bucket = ArchiveBucket(LocalStore(tmp_path / name, fsync=False))
        with Session() as session:
            result = Archiver(bucket, session).archive(
                Reference.parse(ref), RegistryOptions(tls_verify=False), options
            )
        assert result.status == "archived", result.error
        report = verify_store(bucket, deep=True)
        assert report.ok, (name, [str(f) for f in report.faults])
        assert report.records == 1 and report.tars == 1
        named = verify_store(bucket, [Reference.parse(ref)])
        assert named.ok, (name, [str(f) for f in named.faults])
        if name == "one":
            amd64 = pushed.child("linux/amd64")
            assert bucket.store.head(layout.blob_key(amd64.digest)) is None
